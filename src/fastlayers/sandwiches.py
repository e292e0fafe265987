"""Layer sandwiches: affine-ReLU and affine-batchnorm-ReLU, fused.

These are the convenience layers that CS231n-style networks build from the
six functions (``layer_utils.py`` there), with the same calling
conventions, and with the passes that the composition wastes taken out:

- ``affine_relu_forward`` applies the ReLU in place in the product's
  kernel, right after gemm, and records the ReLU's mask (1 byte an
  element) instead of keeping the pre-activation; its backward gates
  dout with that mask in the same pass that sums db.
- ``affine_batchnorm_relu_forward`` normalises and applies the ReLU in one
  pass and never stores the batch norm's output; its backward recomputes
  that output (bit for bit) to gate dout inside both batch-norm passes,
  and sums db in the pass that writes the batch norm's dx.

Values and gradients equal the composition of the single layers; the
caches are tuples of the single layers' caches (the ReLU's part being a
:class:`~fastlayers.ReluMask`, or nothing when it is recomputed).
"""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from ._cache import BatchNormCache, ReluMask
from ._kernels._blas import blas_int_zero
from ._kernels.affine import affine_forward_plain, affine_input_gradients, affine_relu_forward_plain
from ._kernels.batchnorm import _batchnorm_backward, _batchnorm_backward_stripes, batchnorm_gradients_plain
from ._validation import as_float_array, check_overlaps
from .layers import (
    FloatArray,
    _is_plain,
    _plain_matrices,
    affine_gradient_plan,
    affine_gradients,
    affine_product,
    affine_setup,
    batchnorm_apply,
    batchnorm_gradients,
    batchnorm_setup,
    plain_train_params,
    serial_batchnorm,
    small_plain_affine,
    small_plain_gradients,
    train_plain,
)

__all__ = [
    "affine_relu_forward",
    "affine_relu_backward",
    "affine_batchnorm_relu_forward",
    "affine_batchnorm_relu_backward",
]


def _unpack(func: str, cache: Any, second: type, forward: str) -> tuple[Any, Any]:
    if not (isinstance(cache, tuple) and len(cache) == 2 and isinstance(cache[1], second)):
        raise ValueError(f"{func}: cache must be the cache returned by {forward}, got {type(cache).__name__}")
    return cache


def affine_relu_forward(x: ArrayLike, w: ArrayLike, b: ArrayLike, *, out: Any = None) -> tuple[FloatArray, Any]:
    """An affine layer followed by a ReLU: ``max(x.reshape(N, D) @ w + b, 0)``.

    Same arguments and ``out`` rules as :func:`fastlayers.affine_forward`.

    Returns
    -------
    out : ndarray, shape (N, M)
    cache : tuple
        ``((x, w, b), ReluMask)``, for :func:`affine_relu_backward`.

    Examples
    --------
    >>> import numpy as np, fastlayers
    >>> out, cache = fastlayers.affine_relu_forward(np.ones((1, 2)), np.array([[1.0, -1.0], [1.0, -1.0]]), np.zeros(2))
    >>> out
    array([[2., 0.]])
    """
    dims = None if out is not None else small_plain_affine(x, w, b)
    if dims is not None:  # affine_forward's small common case, with the ReLU
        n, _, m = dims
        result, mask = np.empty((n, m), x.dtype), np.empty((n, m), np.bool_)
        affine_relu_forward_plain(blas_int_zero(), x, w, b, mask, result)
        return result, ((x, w, b), ReluMask(mask))
    func = "affine_relu_forward"
    result, relu_mask = affine_product(func, affine_setup(func, x, w, b), out, relu=True)
    return result, ((x, w, b), relu_mask)


def affine_relu_backward(dout: ArrayLike, cache: Any, *, dx: Any = None, dw: Any = None,
                         db: Any = None) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Gradients (dx, dw, db) of :func:`affine_relu_forward`.

    dx, dw and db, if given, follow :func:`fastlayers.affine_backward`'s rules.
    """
    func = "affine_relu_backward"
    fc_cache, relu_mask = _unpack(func, cache, ReluMask, "affine_relu_forward")
    if dx is None and dw is None and db is None:  # affine_backward's small common case, through the mask
        gradients = small_plain_gradients(dout, fc_cache, relu_mask.mask)
        if gradients is not None:
            return gradients
    return affine_gradients(func, dout, fc_cache, relu_mask, dx, dw, db)


def affine_batchnorm_relu_forward(
    x: ArrayLike, w: ArrayLike, b: ArrayLike, gamma: ArrayLike, beta: ArrayLike,
    bn_param: MutableMapping[str, Any], *, out: Any = None, comm: Any = None,
) -> tuple[FloatArray, Any]:
    """Affine, then batch norm (train or test mode, through ``bn_param``), then ReLU.

    Parameters
    ----------
    x, w, b : as for :func:`fastlayers.affine_forward`
    gamma, beta, bn_param : as for :func:`fastlayers.batchnorm_forward`,
        with D the affine layer's M.
    out : ndarray, optional
        Where to write the result: exactly shape (N, M) and the result
        dtype, C-contiguous, writeable, overlapping no input.
    comm : mpi4py communicator, optional
        Synchronised batch norm across the ranks (see
        :func:`fastlayers.batchnorm_forward`); the affine layer's gradients
        stay each rank's own, to be reduced like any other weight gradient.

    Returns
    -------
    out : ndarray, shape (N, M)
    cache : tuple
        ``((x, w, b), BatchNormCache)`` in train mode, for
        :func:`affine_batchnorm_relu_backward`; ``((x, w, b), None)`` in test mode.

    Examples
    --------
    >>> import numpy as np, fastlayers
    >>> x = np.array([[1.0], [3.0]]); w = np.array([[1.0, -1.0]])
    >>> out, cache = fastlayers.affine_batchnorm_relu_forward(x, w, np.zeros(2), np.ones(2), np.zeros(2),
    ...                                                       {"mode": "train"})
    >>> np.round(out, 4)
    array([[0., 1.],
           [1., 0.]])
    """
    dims = small_plain_affine(x, w, b) if out is None and comm is None else None
    if dims is not None:  # the single layers' small common case (see plain_train_params), fused the same way
        n, _, m = dims
        params = plain_train_params(gamma, beta, bn_param, x.dtype, (n, m))
        if params is not None:
            pre = np.empty((n, m), x.dtype)
            affine_forward_plain(blas_int_zero(), x, w, b, pre)
            result, bn_cache = train_plain(pre, gamma, beta, bn_param, params, relu=True)
            return result, ((x, w, b), bn_cache)
    func = "affine_batchnorm_relu_forward"
    fc_args = affine_setup(func, x, w, b)
    # The batch norm's arguments are checked before any work is done.
    bn_args = batchnorm_setup(func, (fc_args["n"], fc_args["m"]), fc_args["dtype"], gamma, beta, bn_param, comm,
                              x_name="the affine output")
    pre, _ = affine_product(func, fc_args, None, relu=False)
    result, bn_cache = batchnorm_apply(func, pre, bn_args, bn_param, out, relu=True, comm=comm,
                                       read={name: fc_args[name] for name in ("x", "w", "b")})
    return result, ((x, w, b), bn_cache)


def affine_batchnorm_relu_backward(
    dout: ArrayLike, cache: Any, *, dx: Any = None, dw: Any = None, db: Any = None, dgamma: Any = None,
    dbeta: Any = None,
) -> tuple[FloatArray, FloatArray, FloatArray, FloatArray, FloatArray]:
    """Gradients (dx, dw, db, dgamma, dbeta) of a train-mode
    :func:`affine_batchnorm_relu_forward`.

    Optional result arrays follow the single layers' rules; none of them
    may overlap an input or another result.
    """
    func = "affine_batchnorm_relu_backward"
    fc_cache, bn_cache = _unpack(func, cache, BatchNormCache, "affine_batchnorm_relu_forward in train mode")
    bn_cache.check(func)
    if (dx is None and dw is None and db is None and dgamma is None and dbeta is None and bn_cache.comm is None
            and type(fc_cache) is tuple and len(fc_cache) == 3):
        x, w, pre = fc_cache[0], fc_cache[1], bn_cache.x
        dims = _plain_matrices(x, w)
        dtype = pre.dtype
        # The single layers' small common case: plain operands of one dtype.
        if (dims is not None and x.dtype is dtype and bn_cache.dtype is dtype and pre.shape == (dims[0], dims[2])
                and serial_batchnorm(_batchnorm_backward, _batchnorm_backward_stripes, *pre.shape, dtype.itemsize, 2)
                and _is_plain(dout, dtype, pre.shape)):
            n, d, m = dims
            dpre, db = np.empty((n, m), dtype), np.empty(m, dtype)
            dgamma, dbeta = np.empty(m, dtype), np.empty(m, dtype)
            batchnorm_gradients_plain(dout, pre, bn_cache.mean, bn_cache.var, bn_cache.gamma, bn_cache.beta,
                                      bn_cache.eps, bn_cache.n_total, np.empty(0, dtype), dpre, dgamma, dbeta, db)
            dx, dw = np.empty((n, d), dtype), np.empty((d, m), dtype)
            affine_input_gradients(blas_int_zero(), dpre, x, False, w, False, dx, dw)
            return dx, dw, db, dgamma, dbeta
    douta = as_float_array(dout, func, "dout")
    # The affine part's checks come first, for the batch norm's dx to come.
    plan = affine_gradient_plan(func, douta.shape, np.result_type(douta, bn_cache.dtype), fc_cache, dx, dw, db, {})
    if not (dx is None and dw is None and db is None and dgamma is None and dbeta is None):
        # Results are written while every input may still be read.
        supplied = {name: np.asarray(array) for name, array in
                    {"dx": dx, "dw": dw, "db": db, "dgamma": dgamma, "dbeta": dbeta}.items() if array is not None}
        check_overlaps(func, supplied, {"dout": douta, "cache x": np.asarray(fc_cache[0]),
                                        "cache w": np.asarray(fc_cache[1]), "cache gamma": bn_cache.gamma,
                                        "cache beta": bn_cache.beta})
    dpre, dgamma, dbeta = batchnorm_gradients(func, douta, bn_cache, None, dgamma, dbeta, relu_column_sums=plan["db"])
    # An affine cache whose x or w has a wider dtype than the batch norm's
    # (replaced after the forward) takes the affine part in that dtype, as
    # affine_backward would; gemm reads operands of one dtype.
    dpre = dpre.astype(plan["dtype"], copy=False)
    n, d = plan["n"], plan["d"]
    affine_input_gradients(blas_int_zero(), dpre, *plan["x"], *plan["w"], plan["dx"].reshape(n, d), plan["dw"])
    return plan["dx"], plan["dw"], plan["db"], dgamma, dbeta
