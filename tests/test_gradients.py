"""Central-difference gradient checks of every backward function (float64)."""

from __future__ import annotations

import numpy as np
import pytest

import fastlayers as fl


def numerical_gradient(f, array: np.ndarray, dout: np.ndarray, h: float = 1e-5) -> np.ndarray:
    """d/d(array) of sum(f() * dout), by central differences (array perturbed in place)."""
    grad = np.empty_like(array)
    flat = array.reshape(-1)
    for i in range(flat.size):
        saved = flat[i]
        flat[i] = saved + h
        plus = np.sum(f() * dout)
        flat[i] = saved - h
        minus = np.sum(f() * dout)
        flat[i] = saved
        grad.reshape(-1)[i] = (plus - minus) / (2 * h)
    return grad


def relative_error(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a - b) / np.maximum(1e-8, np.abs(a) + np.abs(b))))


@pytest.mark.parametrize("layer", ["affine", "affine_relu"])
def test_affine_gradients(path, rng, layer):
    forward_function = getattr(fl, f"{layer}_forward")
    x = rng.standard_normal((4, 3, 2))
    w = rng.standard_normal((6, 5))
    b = rng.standard_normal(5)
    dout = rng.standard_normal((4, 5))
    assert np.min(np.abs(x.reshape(4, 6) @ w + b)) > 1e-4  # the ReLU's kink is beyond the finite difference
    _, cache = forward_function(x, w, b)
    dx, dw, db = getattr(fl, f"{layer}_backward")(dout, cache)

    def forward():
        return forward_function(x, w, b)[0]

    assert relative_error(dx, numerical_gradient(forward, x, dout)) < 1e-7
    assert relative_error(dw, numerical_gradient(forward, w, dout)) < 1e-7
    assert relative_error(db, numerical_gradient(forward, b, dout)) < 1e-7


def test_relu_gradient(path, rng):
    x = rng.standard_normal((5, 7))
    x[np.abs(x) < 1e-3] = 0.5  # keep clear of the kink
    dout = rng.standard_normal((5, 7))
    _, cache = fl.relu_forward(x)
    dx = fl.relu_backward(dout, cache)
    numeric = numerical_gradient(lambda: fl.relu_forward(x)[0], x, dout)
    assert relative_error(dx, numeric) < 1e-7


# (N = 2 is left out: there xhat = ±1 whatever x is, dx is ~1e-6 and the
# finite difference measures only its own rounding.)
@pytest.mark.parametrize("shape", [(3, 1), (6, 4), (17, 3)])
def test_batchnorm_gradients(path, rng, shape):
    n, d = shape
    x = rng.standard_normal(shape) * 2 + 1
    gamma = rng.standard_normal(d)
    beta = rng.standard_normal(d)
    dout = rng.standard_normal(shape)
    _, cache = fl.batchnorm_forward(x, gamma, beta, {"mode": "train"})
    dx, dgamma, dbeta = fl.batchnorm_backward(dout, cache)

    def forward():
        return fl.batchnorm_forward(x, gamma, beta, {"mode": "train"})[0]

    assert relative_error(dx, numerical_gradient(forward, x, dout)) < 1e-7
    assert relative_error(dgamma, numerical_gradient(forward, gamma, dout)) < 1e-7
    assert relative_error(dbeta, numerical_gradient(forward, beta, dout)) < 1e-7


def test_batchnorm_closed_form(rng):
    """The contract's cross-check: dx = gamma*ivar/N (N dout - sum dout - xhat sum(dout xhat))."""
    x = rng.standard_normal((50, 8)) * 3 - 1
    gamma = rng.standard_normal(8)
    dout = rng.standard_normal((50, 8))
    _, cache = fl.batchnorm_forward(x, gamma, np.zeros(8), {"mode": "train"})
    dx, dgamma, dbeta = fl.batchnorm_backward(dout, cache)
    ivar = 1 / np.sqrt(x.var(axis=0) + 1e-5)
    xhat = (x - x.mean(axis=0)) * ivar
    expected = gamma * ivar / 50 * (50 * dout - dout.sum(0) - xhat * (dout * xhat).sum(0))
    np.testing.assert_allclose(dx, expected, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(dgamma, (dout * xhat).sum(0), rtol=1e-10)
    np.testing.assert_allclose(dbeta, dout.sum(0), rtol=1e-12)
