"""fastlayers: the CS231n-style NumPy layers, JIT-compiled with numba.

Six functions with the seed page's signatures and answers::

    affine_forward(x, w, b)                   -> out, cache
    affine_backward(dout, cache)              -> dx, dw, db
    relu_forward(x)                           -> out, cache
    relu_backward(dout, cache)                -> dx
    batchnorm_forward(x, gamma, beta, bn_param) -> out, cache
    batchnorm_backward(dout, cache)           -> dx, dgamma, dbeta

``fastlayers.reference`` holds the plain-NumPy originals.
"""

from __future__ import annotations

from . import _threads  # first: picks numba's threading layer before any kernel runs
from ._threads import get_num_threads, set_num_threads, threading_layer
from ._cache import BatchNormCache
from .layers import (
    affine_backward,
    affine_forward,
    batchnorm_backward,
    batchnorm_forward,
    relu_backward,
    relu_forward,
)

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "affine_forward",
    "affine_backward",
    "relu_forward",
    "relu_backward",
    "batchnorm_forward",
    "batchnorm_backward",
    "BatchNormCache",
    "warmup",
    "threading_layer",
    "set_num_threads",
    "get_num_threads",
]


def warmup(dtypes: tuple[str, ...] = ("float32", "float64")) -> None:
    """Compile (or load from the on-disk cache) every kernel for ``dtypes``.

    Servers call this once at start-up so that no request pays the
    first-call compile. Both the serial and the parallel twin of every
    kernel are prepared, for C-contiguous, writeable inputs.
    """
    import numpy as np

    from ._kernels import _twins

    for name in dtypes:
        dtype = np.dtype(name)
        if dtype not in (np.float32, np.float64):
            raise TypeError(f"warmup: dtypes must be float32 or float64, got {name!r}")
        x = np.ones((4, 3), dtype)
        w = np.ones((3, 2), dtype)
        for path in ("serial", "parallel"):
            with _twins.forced_path(path):
                out, cache = affine_forward(x, w, np.ones(2, dtype))
                affine_backward(out, cache)
                out, cache = relu_forward(x)
                relu_backward(out, cache)
                params = {"mode": "train"}
                out, cache = batchnorm_forward(x, x[0], x[0], params)
                batchnorm_backward(out, cache)
