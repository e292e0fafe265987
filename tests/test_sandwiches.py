"""The fused sandwiches against the composition of the single layers.

Against fastlayers' own single layers the sandwiches must agree bit for
bit (same kernels, same reduction order, the ReLU's mask recomputed with
the forward's bits); against the seed page's layers, to the contract's
tolerances; and their gradients must pass a central-difference check.
"""

from __future__ import annotations

import numpy as np
import pytest

import fastlayers as fl
from fastlayers import reference as ref

from conftest import DTYPES, LAYOUTS, assert_close_to_reference, with_layout
from test_gradients import numerical_gradient, relative_error

# (x shape, M): odd sizes, a 4-D input, a parallel-size output, empty edges.
SHAPES = [((1, 1), 1), ((7, 13), 5), ((33, 3, 4, 5), 17), ((300, 64), 300), ((2, 9), 1)]
EMPTY_SHAPES = [((0, 6), 4), ((5, 0), 3), ((4, 6), 0)]


def _inputs(rng, x_shape, m, dtype, layout):
    d = int(np.prod(x_shape[1:]))
    arrays = {
        "x": rng.standard_normal(x_shape) * 2 + 0.3,
        "w": rng.standard_normal((d, m)) / np.sqrt(max(d, 1)),
        "b": rng.standard_normal(m),
        "gamma": rng.standard_normal(m),
        "beta": rng.standard_normal(m),
        "dout": rng.standard_normal((x_shape[0], m)),
    }
    return {name: with_layout(a.astype(dtype), layout) for name, a in arrays.items()}


COMPOSED = ref.compose_sandwiches(fl)  # fastlayers' single layers, one after the other


def _fl_affine_relu(a):
    out, cache = COMPOSED.affine_relu_forward(a["x"], a["w"], a["b"])
    return out, COMPOSED.affine_relu_backward(a["dout"], cache)


def _fl_affine_batchnorm_relu(a, bn_param):
    out, cache = COMPOSED.affine_batchnorm_relu_forward(a["x"], a["w"], a["b"], a["gamma"], a["beta"], bn_param)
    return out, (COMPOSED.affine_batchnorm_relu_backward(a["dout"], cache) if cache[1] is not None else None)


def _assert_bitwise(actual, expected):
    for got, want in zip(actual, expected, strict=True):
        assert got.dtype == want.dtype and got.shape == want.shape
        np.testing.assert_array_equal(got, want)
        assert np.array_equal(np.signbit(got), np.signbit(want))


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("x_shape,m", SHAPES + EMPTY_SHAPES)
def test_affine_relu_equals_composition(path, rng, x_shape, m, dtype, layout):
    a = _inputs(rng, x_shape, m, dtype, layout)
    out, cache = fl.affine_relu_forward(a["x"], a["w"], a["b"])
    grads = fl.affine_relu_backward(a["dout"], cache)
    expected_out, expected_grads = _fl_affine_relu(a)
    _assert_bitwise([out, *grads], [expected_out, *expected_grads])


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("x_shape,m", SHAPES + EMPTY_SHAPES[1:])  # train mode needs N >= 1
def test_affine_batchnorm_relu_equals_composition(path, rng, x_shape, m, dtype, layout):
    a = _inputs(rng, x_shape, m, dtype, layout)
    params = {"mode": "train", "momentum": 0.8, "running_mean": np.full(m, 0.5, dtype)}
    expected_params = dict(params)
    for _ in range(2):  # the second step finds both running statistics (small plain calls: the short entries)
        out, cache = fl.affine_batchnorm_relu_forward(a["x"], a["w"], a["b"], a["gamma"], a["beta"], params)
        grads = fl.affine_batchnorm_relu_backward(a["dout"], cache)
        expected_out, expected_grads = _fl_affine_batchnorm_relu(a, expected_params)
        _assert_bitwise([out, *grads], [expected_out, *expected_grads])
        _assert_bitwise([params["running_mean"], params["running_var"]],
                        [expected_params["running_mean"], expected_params["running_var"]])


@pytest.mark.parametrize("dtype", DTYPES)
def test_affine_batchnorm_relu_test_mode(path, rng, dtype):
    a = _inputs(rng, (40, 7), 9, dtype, "C")
    running = {"running_mean": rng.standard_normal(9).astype(dtype), "running_var": rng.random(9).astype(dtype)}
    out, cache = fl.affine_batchnorm_relu_forward(a["x"], a["w"], a["b"], a["gamma"], a["beta"],
                                                  {"mode": "test", **running})
    expected_out, _ = _fl_affine_batchnorm_relu(a, {"mode": "test", **running})
    _assert_bitwise([out], [expected_out])
    assert cache[1] is None
    with pytest.raises(ValueError, match="affine_batchnorm_relu_backward: cache must be .* train mode"):
        fl.affine_batchnorm_relu_backward(a["dout"], cache)


def test_nonfinite_values_match_composition(path, rng):
    """NaN and Inf in x and dout land where the composition puts them."""
    a = _inputs(rng, (64, 12), 10, np.float64, "C")
    a["x"][3, 4] = np.nan
    a["dout"][5, 1] = np.inf
    a["dout"][9, 2] = -np.inf
    a["dout"][11, 3] = np.nan
    out, cache = fl.affine_relu_forward(a["x"], a["w"], a["b"])
    expected_out, expected_grads = _fl_affine_relu(a)
    _assert_bitwise([out, *fl.affine_relu_backward(a["dout"], cache)], [expected_out, *expected_grads])
    a["x"][3, 4] = 1.0  # batch norm: a NaN row would make every feature NaN
    out, cache = fl.affine_batchnorm_relu_forward(a["x"], a["w"], a["b"], a["gamma"], a["beta"], {"mode": "train"})
    expected_out, expected_grads = _fl_affine_batchnorm_relu(a, {"mode": "train"})
    _assert_bitwise([out, *fl.affine_batchnorm_relu_backward(a["dout"], cache)], [expected_out, *expected_grads])


def test_exact_zero_preactivations_pass_the_gradient(path):
    """Pre-activations of exactly +0 and -0: the mask is x >= 0, so both pass."""
    x = np.array([[1.0, -1.0], [0.0, 0.0]])
    w = np.array([[1.0, -1.0], [1.0, -1.0]])
    out, cache = fl.affine_relu_forward(x, w, np.zeros(2))
    dx, dw, db = fl.affine_relu_backward(np.ones((2, 2)), cache)
    np.testing.assert_array_equal(db, [2.0, 2.0])
    expected_out, expected_grads = _fl_affine_relu({"x": x, "w": w, "b": np.zeros(2), "dout": np.ones((2, 2))})
    _assert_bitwise([out, dx, dw, db], [expected_out, *expected_grads])


@pytest.mark.parametrize("dtype", DTYPES)
def test_against_seed_layers(rng, dtype):
    """The contract's tolerances against the seed page's layers, composed."""
    a = _inputs(rng, (50, 3, 7), 30, dtype, "C")
    a64 = {name: value.astype(np.float64) for name, value in a.items()}
    out, cache = fl.affine_batchnorm_relu_forward(a["x"], a["w"], a["b"], a["gamma"], a["beta"], {"mode": "train"})
    results = [out, *fl.affine_batchnorm_relu_backward(a["dout"], cache)]
    for inputs, name in ((a64, "exact"), (a, "same")):
        r_out, r_cache = ref.affine_batchnorm_relu_forward(inputs["x"], inputs["w"], inputs["b"], inputs["gamma"],
                                                           inputs["beta"], {"mode": "train"})
        r_results = [r_out, *ref.affine_batchnorm_relu_backward(inputs["dout"], r_cache)]
        if name == "exact":
            exact = r_results
        else:
            same = r_results
    for index, (actual, want, own) in enumerate(zip(results, exact, same)):
        if index == 3:  # db: the sum over the batch of batch norm's dx is 0 up to rounding
            scale = np.abs(ref.batchnorm_backward(*_reference_dnormalized(a64))[0]).max() * len(actual)
            tolerance = 1e-12 if dtype == np.float64 else 1e-5
            assert np.max(np.abs(actual - want)) <= tolerance * scale
        else:
            assert_close_to_reference(actual, want, own, dtype)
    out, cache = fl.affine_relu_forward(a["x"], a["w"], a["b"])
    r_out, r_cache = ref.affine_relu_forward(a64["x"], a64["w"], a64["b"])
    r_out32, r_cache32 = ref.affine_relu_forward(a["x"], a["w"], a["b"])
    for actual, want, own in zip([out, *fl.affine_relu_backward(a["dout"], cache)],
                                 [r_out, *ref.affine_relu_backward(a64["dout"], r_cache)],
                                 [r_out32, *ref.affine_relu_backward(a["dout"], r_cache32)]):
        assert_close_to_reference(actual, want, own, dtype)


def _reference_dnormalized(a):
    """(batch norm's upstream gradient, its cache) in the seed's composition."""
    pre, _ = ref.affine_forward(a["x"], a["w"], a["b"])
    normalized, bn_cache = ref.batchnorm_forward(pre, a["gamma"], a["beta"], {"mode": "train"})
    return ref.relu_backward(a["dout"], normalized), bn_cache


@pytest.mark.parametrize("n", [3, 17])
def test_affine_batchnorm_relu_gradients(path, rng, n):
    x = rng.standard_normal((n, 4))
    w = rng.standard_normal((4, 6))
    b = rng.standard_normal(6)
    gamma = rng.standard_normal(6)
    beta = rng.standard_normal(6)
    dout = rng.standard_normal((n, 6))
    out, cache = fl.affine_batchnorm_relu_forward(x, w, b, gamma, beta, {"mode": "train"})
    grads = fl.affine_batchnorm_relu_backward(dout, cache)

    def forward():
        return fl.affine_batchnorm_relu_forward(x, w, b, gamma, beta, {"mode": "train"})[0]

    dx, dw, db, dgamma, dbeta = grads
    for grad, array in ((dx, x), (dw, w), (dgamma, gamma), (dbeta, beta)):
        assert relative_error(grad, numerical_gradient(forward, array, dout)) < 1e-6
    # b shifts every row alike, which batch norm removes: db is 0 up to rounding.
    np.testing.assert_allclose(db, numerical_gradient(forward, b, dout), atol=1e-9)
    assert np.max(np.abs(db)) < 1e-12


@pytest.mark.parametrize("replacement", ["float64", "int64", "list"])
@pytest.mark.parametrize("operand", [0, 1], ids=["x", "w"])
@pytest.mark.parametrize("x_shape,m", [((7, 13), 5), ((300, 64), 300)])
def test_affine_cache_replaced_by_another_dtype_matches_composition(path, rng, x_shape, m, operand, replacement):
    """A float32 sandwich whose affine cache had x or w replaced by a wider
    operand: the affine part is computed in the wider dtype, as
    affine_backward computes it from the same cache (gemm reads one dtype)."""
    a = _inputs(rng, x_shape, m, np.float32, "C")
    params = {"mode": "train"}
    _, cache = fl.affine_batchnorm_relu_forward(a["x"], a["w"], a["b"], a["gamma"], a["beta"], dict(params))
    fc_cache = list(cache[0])
    original = fc_cache[operand]
    fc_cache[operand] = (original.astype(np.float64) if replacement == "float64"
                         else np.round(original * 4).astype(np.int64) if replacement == "int64" else original.tolist())
    grads = fl.affine_batchnorm_relu_backward(a["dout"], (tuple(fc_cache), cache[1]))
    # The single layers, with the same replacement in the affine layer's cache.
    pre, _ = fl.affine_forward(a["x"], a["w"], a["b"])
    normalized, bn_cache = fl.batchnorm_forward(pre, a["gamma"], a["beta"], dict(params))
    _, relu_cache = fl.relu_forward(normalized)
    dpre, dgamma, dbeta = fl.batchnorm_backward(fl.relu_backward(a["dout"], relu_cache), bn_cache)
    dx, dw, db = fl.affine_backward(dpre, tuple(fc_cache))
    assert dx.dtype == dw.dtype == np.float64 and db.dtype == np.float32
    _assert_bitwise(grads, [dx, dw, db, dgamma, dbeta])


def test_errors_name_the_argument(rng):
    a = _inputs(rng, (5, 4), 3, np.float64, "C")
    with pytest.raises(ValueError, match="gamma has shape \\(4,\\) but the affine output of shape \\(5, 3\\)"):
        fl.affine_batchnorm_relu_forward(a["x"], a["w"], a["b"], np.ones(4), a["beta"], {"mode": "train"})
    with pytest.raises(ValueError, match="affine_batchnorm_relu_forward: w has shape"):
        fl.affine_batchnorm_relu_forward(a["x"], np.ones((2, 3)), a["b"], a["gamma"], a["beta"], {"mode": "train"})
    with pytest.raises(KeyError, match="mode"):
        fl.affine_batchnorm_relu_forward(a["x"], a["w"], a["b"], a["gamma"], a["beta"], {})
    with pytest.raises(ValueError, match="N >= 1"):
        fl.affine_batchnorm_relu_forward(a["x"][:0], a["w"], a["b"], a["gamma"], a["beta"], {"mode": "train"})
    _, fc_cache = fl.affine_forward(a["x"], a["w"], a["b"])
    with pytest.raises(ValueError, match="affine_relu_backward: cache must be the cache returned by affine_relu_forward"):
        fl.affine_relu_backward(a["dout"], fc_cache)
    out, cache = fl.affine_relu_forward(a["x"], a["w"], a["b"])
    with pytest.raises(ValueError, match="affine_relu_backward: dout has shape \\(5, 4\\)"):
        fl.affine_relu_backward(np.ones((5, 4)), cache)
    out, cache = fl.affine_batchnorm_relu_forward(a["x"], a["w"], a["b"], a["gamma"], a["beta"], {"mode": "train"})
    with pytest.raises(ValueError, match="affine_batchnorm_relu_backward: dout has shape"):
        fl.affine_batchnorm_relu_backward(np.ones((4, 3)), cache)
    with pytest.raises(ValueError, match="cache must be the cache returned by affine_batchnorm_relu_forward"):
        fl.affine_batchnorm_relu_backward(a["dout"], cache[0])


def test_inputs_are_not_modified(rng):
    a = _inputs(rng, (20, 6), 8, np.float64, "C")
    saved = {name: value.copy() for name, value in a.items()}
    params = {"mode": "train", "running_mean": np.zeros(8), "running_var": np.ones(8)}
    running = (params["running_mean"], params["running_var"])
    out, cache = fl.affine_batchnorm_relu_forward(a["x"], a["w"], a["b"], a["gamma"], a["beta"], params)
    fl.affine_batchnorm_relu_backward(a["dout"], cache)
    out, cache = fl.affine_relu_forward(a["x"], a["w"], a["b"])
    fl.affine_relu_backward(a["dout"], cache)
    for name, value in a.items():
        np.testing.assert_array_equal(value, saved[name])
    np.testing.assert_array_equal(running[0], np.zeros(8))
    np.testing.assert_array_equal(running[1], np.ones(8))
