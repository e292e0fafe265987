"""The seed page's layers in plain NumPy, step for step.

This module is fastlayers' oracle: the tests compare every compiled function
with its twin here, and the benchmarks use it as the baseline. It follows
the algorithm of the seed page (CS231n-style affine, ReLU and batch norm,
the batch-norm backward through its 10-step computation graph) and performs
no argument checking beyond what NumPy itself does.
"""

from __future__ import annotations

import sys
from types import SimpleNamespace
from typing import Any

import numpy as np

__all__ = [
    "affine_forward",
    "affine_backward",
    "relu_forward",
    "relu_backward",
    "batchnorm_forward",
    "batchnorm_backward",
    "affine_relu_forward",
    "affine_relu_backward",
    "affine_batchnorm_relu_forward",
    "affine_batchnorm_relu_backward",
]


def _row_size(x: np.ndarray) -> int:
    # The seed reshapes to [N, -1], which NumPy cannot resolve when N = 0;
    # the explicit D = d1 * ... * dk gives the same view and handles it.
    return int(np.prod(x.shape[1:]))


def affine_forward(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, tuple]:
    """out = x.reshape(N, D) @ w + b; cache = (x, w, b)."""
    n = x.shape[0]
    reshaped_input = np.reshape(x, [n, _row_size(x)])
    out = np.dot(reshaped_input, w) + b
    cache = (x, w, b)
    return out, cache


def affine_backward(dout: np.ndarray, cache: tuple) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gradients (dx, dw, db) of :func:`affine_forward`."""
    x, w, b = cache
    n = x.shape[0]
    reshaped_x = np.reshape(x, [n, _row_size(x)])
    dx = np.dot(dout, w.T)
    dx = np.reshape(dx, x.shape)
    dw = np.dot(reshaped_x.T, dout)
    db = np.sum(dout, axis=0)
    return dx, dw, db


def relu_forward(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """out = x with entries < 0 set to 0; cache = x."""
    out = x.copy()
    out[out < 0] = 0
    cache = x
    return out, cache


def relu_backward(dout: np.ndarray, cache: np.ndarray) -> np.ndarray:
    """dx = dout * (x >= 0)."""
    x = cache
    relu_mask = x >= 0
    dx = dout * relu_mask
    return dx


def batchnorm_forward(
    x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, bn_param: dict[str, Any]
) -> tuple[np.ndarray, dict[str, np.ndarray] | None]:
    """Batch norm forward, train or test mode, updating ``bn_param``."""
    mode = bn_param["mode"]
    eps = bn_param.get("eps", 1e-5)
    momentum = bn_param.get("momentum", 0.9)

    n, d = x.shape
    running_mean = bn_param.get("running_mean", np.zeros(d, dtype=x.dtype))
    running_var = bn_param.get("running_var", np.zeros(d, dtype=x.dtype))

    out, cache = None, None
    if mode == "train":
        sample_mean = np.mean(x, axis=0)
        sample_var = np.var(x, axis=0)

        normalized_data = (x - sample_mean) / np.sqrt(sample_var + eps)
        out = gamma * normalized_data + beta

        running_mean = momentum * running_mean + (1 - momentum) * sample_mean
        running_var = momentum * running_var + (1 - momentum) * sample_var

        cache = {
            "x_minus_mean": (x - sample_mean),
            "normalized_data": normalized_data,
            "gamma": gamma,
            "ivar": 1.0 / np.sqrt(sample_var + eps),
            "sqrtvar": np.sqrt(sample_var + eps),
        }
    elif mode == "test":
        out = (gamma / (np.sqrt(running_var + eps)) * x) + (
            beta - (gamma * running_mean) / np.sqrt(running_var + eps)
        )
    else:
        raise ValueError('Invalid forward batchnorm mode "%s"' % mode)

    bn_param["running_mean"] = running_mean
    bn_param["running_var"] = running_var
    return out, cache


def batchnorm_backward(
    dout: np.ndarray, cache: dict[str, np.ndarray]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gradients (dx, dgamma, dbeta) of the train-mode forward, in 10 steps."""
    n, d = dout.shape
    normalized_data = cache.get("normalized_data")
    gamma = cache.get("gamma")
    ivar = cache.get("ivar")
    x_minus_mean = cache.get("x_minus_mean")
    sqrtvar = cache.get("sqrtvar")

    dbeta = np.sum(dout, axis=0)
    dgamma = np.sum(dout * normalized_data, axis=0)

    dxhat = dout * gamma  # step 1
    dxmu1 = dxhat * ivar  # step 2
    divar = np.sum(dxhat * x_minus_mean, axis=0)  # step 3
    dsqrtvar = divar * (-1 / sqrtvar**2)  # step 4
    dvar = dsqrtvar * 0.5 * (1 / sqrtvar)  # step 5
    dsq = (1 / n) * dvar * np.ones_like(dout)  # step 6
    dxmu2 = dsq * 2 * x_minus_mean  # step 7
    dx1 = dxmu1 + dxmu2  # step 8
    dmu = -1 * np.sum(dxmu1 + dxmu2, axis=0)
    dx2 = (1 / n) * dmu * np.ones_like(dout)  # step 9
    dx = dx2 + dx1  # step 10
    return dx, dgamma, dbeta


# The sandwiches, composed from single layers as CS231n's layer_utils does.
# One definition serves two compositions: of the layers above (the reference
# sandwiches) and of fastlayers' single layers (the baseline that the fused
# sandwiches are measured against).


def compose_sandwiches(single: Any) -> SimpleNamespace:
    """The four sandwiches built from the six layers of module ``single``."""

    def affine_relu_forward(x, w, b):
        """relu(affine(x)); cache = (affine cache, relu cache)."""
        a, fc_cache = single.affine_forward(x, w, b)
        out, relu_cache = single.relu_forward(a)
        return out, (fc_cache, relu_cache)

    def affine_relu_backward(dout, cache):
        """Gradients (dx, dw, db) of affine_relu_forward."""
        fc_cache, relu_cache = cache
        return single.affine_backward(single.relu_backward(dout, relu_cache), fc_cache)

    def affine_batchnorm_relu_forward(x, w, b, gamma, beta, bn_param):
        """relu(batchnorm(affine(x))); cache = (affine, batch-norm, relu caches)."""
        a, fc_cache = single.affine_forward(x, w, b)
        normalized, bn_cache = single.batchnorm_forward(a, gamma, beta, bn_param)
        out, relu_cache = single.relu_forward(normalized)
        return out, (fc_cache, bn_cache, relu_cache)

    def affine_batchnorm_relu_backward(dout, cache):
        """Gradients (dx, dw, db, dgamma, dbeta) of a train-mode affine_batchnorm_relu_forward."""
        fc_cache, bn_cache, relu_cache = cache
        da, dgamma, dbeta = single.batchnorm_backward(single.relu_backward(dout, relu_cache), bn_cache)
        dx, dw, db = single.affine_backward(da, fc_cache)
        return dx, dw, db, dgamma, dbeta

    return SimpleNamespace(affine_relu_forward=affine_relu_forward, affine_relu_backward=affine_relu_backward,
                           affine_batchnorm_relu_forward=affine_batchnorm_relu_forward,
                           affine_batchnorm_relu_backward=affine_batchnorm_relu_backward)


_sandwiches = compose_sandwiches(sys.modules[__name__])
affine_relu_forward = _sandwiches.affine_relu_forward
affine_relu_backward = _sandwiches.affine_relu_backward
affine_batchnorm_relu_forward = _sandwiches.affine_batchnorm_relu_forward
affine_batchnorm_relu_backward = _sandwiches.affine_batchnorm_relu_backward
