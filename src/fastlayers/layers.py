"""The public layer functions: validate, pick the kernel by size, call it.

Each function has the seed page's signature and semantics (see
``fastlayers.reference``); the numeric work happens in ``fastlayers._kernels``.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from math import prod
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from ._cache import BatchNormCache, ReluMask
from ._distributed import check_communicator, global_rows, merge_statistics, sum_over_ranks
from ._kernels._blas import blas_int_zero
from ._kernels._twins import (
    STRIPES_MIN_FEATURES,
    TwinKernel,
    n_column_splits,
    n_column_stripes,
    n_row_parts,
    parted_work,
)
from ._kernels.affine import (
    _affine_backward,
    _affine_forward,
    affine_backward_plain,
    affine_forward_plain,
    affine_gradients_plain,
)
from ._kernels.batchnorm import (
    _batchnorm_backward,
    _batchnorm_backward_stripes,
    _batchnorm_normalize,
    _batchnorm_stats,
    _batchnorm_train_stripes,
    batchnorm_backward_plain,
    batchnorm_relu_train_plain,
    batchnorm_train_plain,
    update_running,
)
from ._kernels.relu import _relu_backward, _relu_forward, relu_backward_plain, relu_forward_plain
from ._memory import fresh_pages
from ._validation import (
    FLOAT32,
    FLOAT64,
    MAX_BLAS_DIM,
    as_float_array,
    check_blas_dims,
    check_ndim,
    check_shape,
    prepare_outputs,
)

__all__ = [
    "affine_forward",
    "affine_backward",
    "relu_forward",
    "relu_backward",
    "batchnorm_forward",
    "batchnorm_backward",
    "BatchNormCache",
    "ReluMask",
]

FloatArray = NDArray[np.floating]
AffineCache = tuple[Any, Any, Any]

# Stand-ins for a kernel's optional arrays ("no mask", "no ReLU"): empty,
# so the kernel's size test skips them; typed like the real ones so that
# one compiled specialisation serves both.
NO_MASK_1D = np.empty(0, dtype=np.bool_)
NO_MASK_2D = np.empty((0, 0), dtype=np.bool_)
NO_ARRAY_1D = np.empty(0)
_BOOL = np.dtype(np.bool_)


def _blas_operand(matrix: np.ndarray, dtype: np.dtype) -> tuple[np.ndarray, bool]:
    """A 2-D ``matrix`` in a form gemm can read: C-contiguous, or the
    C-contiguous transpose, of ``dtype``.

    Returns (matrix, is_transposed); copies only when neither order fits.
    """
    if matrix.dtype == dtype:
        if matrix.flags.c_contiguous:
            return matrix, False
        if matrix.flags.f_contiguous:
            return matrix.T, True
    return np.ascontiguousarray(matrix, dtype=dtype), False


def _as_matrix(x: np.ndarray, n: int, d: int) -> np.ndarray:
    """x (N, d1..dk) as an (N, D) matrix; a 2-D x as it is (reshape() costs
    0.14 us, a few % of a small call)."""
    return x if x.ndim == 2 else x.reshape(n, d)


def _affine_operands(func: str, x: np.ndarray, w: np.ndarray) -> tuple[int, int, int]:
    """Check x (N, d1..dk) against w (D, M); return N, D, M."""
    if x.ndim < 1:
        raise ValueError(f"{func}: x must have shape (N, d1, ..., dk), got a 0-d array")
    check_ndim(w, 2, func, "w", "(D, M)")
    n = x.shape[0]
    d = prod(x.shape[1:])
    if w.shape[0] != d:
        raise ValueError(
            f"{func}: w has shape {w.shape} but x of shape {x.shape} has "
            f"D = {d} features per row, so w needs shape ({d}, M)"
        )
    m = w.shape[1]
    check_blas_dims(func, n, d, m)
    return n, d, m


def _plain_matrices(x: Any, w: Any) -> tuple[int, int, int] | None:
    """(N, D, M) if x (N, D) and w (D, M) are plain C-contiguous 2-D ndarrays
    of one of NumPy's own float dtypes, with BLAS-sized dimensions; else None.

    The affine layer's common case, which the kernels take as it is: tested
    with ``_is_plain`` for the third operand in about 0.6 us, it spares
    the general path's checks and conversions, which cost 2.2 us (forward)
    and 3.1 us (backward) more at 64x100x10, where a whole call takes
    4.0-9.5 us (BENCHMARKS.md, sessions 8 and 9). Identity with
    ``np.dtype(np.float32)`` or ``np.dtype(np.float64)`` implies native
    byte order; an equal dtype that is another object, like any other
    input, just takes the general path, which converts it or says what is
    wrong with it.
    """
    array = np.ndarray
    if type(x) is not array or type(w) is not array:
        return None
    dtype = x.dtype
    if (dtype is not FLOAT32 and dtype is not FLOAT64) or w.dtype is not dtype:
        return None
    try:
        (n, d), (d_w, m) = x.shape, w.shape
    except ValueError:  # not both 2-D
        return None
    if d_w != d or n > MAX_BLAS_DIM or d > MAX_BLAS_DIM or m > MAX_BLAS_DIM:
        return None
    if not (x.flags.c_contiguous and w.flags.c_contiguous):
        return None
    return n, d, m


def _is_plain(value: Any, dtype: np.dtype, shape: tuple[int, ...]) -> bool:
    """Whether value is a plain C-contiguous ndarray of exactly ``dtype`` (the
    very object) and ``shape``: ``_plain_matrices``' test for one more operand."""
    return type(value) is np.ndarray and value.dtype is dtype and value.shape == shape and value.flags.c_contiguous


def small_plain_affine(x: Any, w: Any, b: Any) -> tuple[int, int, int] | None:
    """(N, D, M) if x and w are ``_plain_matrices``, b a plain (M,) array of
    their dtype, and the product small enough for the serial twin: the case
    the forward short entries take. Else None."""
    dims = _plain_matrices(x, w)
    if dims is not None and _affine_forward.small(dims[0] * dims[2]) and _is_plain(b, x.dtype, dims[2:]):
        return dims
    return None


def small_plain_gradients(dout: Any, cache: Any, relu_kept: np.ndarray | None = None
                          ) -> tuple[FloatArray, FloatArray, FloatArray] | None:
    """(dx, dw, db) through the backward short entries if ``cache`` is the
    (x, w, b) of ``_plain_matrices``, dout a plain (N, M) array of their
    dtype and the call small enough for the serial twin (through the ReLU
    when ``relu_kept``, a plain boolean (N, M) mask, is given); else None,
    and nothing is computed."""
    if type(cache) is not tuple or len(cache) != 3:
        return None
    x, w = cache[0], cache[1]
    dims = _plain_matrices(x, w)
    if dims is None or not _affine_backward.small(dims[0] * dims[2]):
        return None
    n, d, m = dims
    dtype = x.dtype
    if not _is_plain(dout, dtype, (n, m)) or (relu_kept is not None and not _is_plain(relu_kept, _BOOL, (n, m))):
        return None
    dx, dw, db = np.empty((n, d), dtype), np.empty((d, m), dtype), np.empty(m, dtype)
    if relu_kept is None:
        affine_backward_plain(blas_int_zero(), dout, x, w, dx, dw, db)
    else:
        affine_gradients_plain(blas_int_zero(), dout, relu_kept, x, w, dx, dw, db)
    return dx, dw, db


def affine_setup(func: str, x: ArrayLike, w: ArrayLike, b: ArrayLike) -> dict[str, Any]:
    """Checked affine operands, in the form the forward kernel takes."""
    dims = _plain_matrices(x, w)
    if dims is not None and _is_plain(b, x.dtype, dims[2:]):
        n, d, m = dims
        return {"x": x, "w": w, "b": b, "n": n, "d": d, "m": m, "dtype": x.dtype,
                "operands": (x, False, w, False, b)}
    xa = as_float_array(x, func, "x")
    wa = as_float_array(w, func, "w")
    ba = as_float_array(b, func, "b")
    n, d, m = _affine_operands(func, xa, wa)
    check_shape(ba, (m,), func, "b", "w of shape {}", wa.shape)
    dtype = np.result_type(xa, wa, ba)
    x_op, x_is_t = _blas_operand(_as_matrix(xa, n, d), dtype)
    w_op, w_is_t = _blas_operand(wa, dtype)
    return {"x": xa, "w": wa, "b": ba, "n": n, "d": d, "m": m, "dtype": dtype,
            "operands": (x_op, x_is_t, w_op, w_is_t, np.ascontiguousarray(ba, dtype=dtype))}


def affine_product(func: str, args: dict[str, Any], out: Any, relu: bool) -> tuple[np.ndarray, ReluMask | None]:
    """``x @ w + b`` of ``affine_setup``'s ``args`` into a checked (or new)
    ``out``, followed in the same kernel by a ReLU when ``relu``; returns
    out and the ReLU's mask."""
    n, m = args["n"], args["m"]
    if out is None:  # np.empty without prepare_outputs' call: 0.2 us instead of 0.5
        out = np.empty((n, m), args["dtype"])
    else:
        (out,), _ = prepare_outputs(func, (("out", out, (n, m), args["dtype"]),),
                                    lambda: {name: args[name] for name in ("x", "w", "b")})
    mask = np.empty((n, m), dtype=np.bool_) if relu else NO_MASK_2D
    _affine_forward(n * m, blas_int_zero(), *args["operands"], mask, out)
    return out, (ReluMask(mask) if relu else None)


def affine_forward(x: ArrayLike, w: ArrayLike, b: ArrayLike, *, out: Any = None) -> tuple[FloatArray, AffineCache]:
    """Forward pass of an affine (fully connected) layer.

    Parameters
    ----------
    x : array, shape (N, d1, ..., dk)
        A minibatch of N inputs; each row is flattened to D = d1 * ... * dk.
    w : array, shape (D, M)
        Weights.
    b : array, shape (M,)
        Biases.
    out : ndarray, optional
        Where to write the result: exactly shape (N, M) and the result
        dtype, C-contiguous and writeable, sharing no memory with x, w or b
        (else ValueError). Without it a new array is returned.

    Returns
    -------
    out : ndarray, shape (N, M)
        ``x.reshape(N, D) @ w + b``, in the result dtype of x, w and b.
    cache : tuple
        ``(x, w, b)``: the arguments themselves, for :func:`affine_backward`.

    Examples
    --------
    >>> import numpy as np, fastlayers
    >>> x = np.ones((2, 3, 4)); w = np.full((12, 5), 0.5); b = np.arange(5.0)
    >>> out, cache = fastlayers.affine_forward(x, w, b)
    >>> out[0]
    array([ 6.,  7.,  8.,  9., 10.])
    """
    dims = None if out is not None else small_plain_affine(x, w, b)
    # The common case of a small call: no general checks. A larger one, where
    # they cost nothing to speak of, takes the general path to the same kernel.
    if dims is not None:
        n, _, m = dims
        result = np.empty((n, m), x.dtype)
        affine_forward_plain(blas_int_zero(), x, w, b, result)
        return result, (x, w, b)
    func = "affine_forward"
    result, _ = affine_product(func, affine_setup(func, x, w, b), out, relu=False)
    return result, (x, w, b)


def affine_gradient_plan(func: str, dout_shape: tuple[int, ...], dout_dtype: np.dtype, cache: Any, dx: Any, dw: Any,
                         db: Any, read: dict[str, np.ndarray]) -> dict[str, Any]:
    """Checked operands and result arrays (the caller's or new) for the
    gradients of the affine layer whose cache is (x, w, b), for a dout of
    ``dout_shape`` and ``dout_dtype``; ``read``: the other arrays the
    computation reads, which the results may not overlap."""
    if dx is None and dw is None and db is None and type(cache) is tuple and len(cache) == 3:
        x, w = cache[0], cache[1]
        dims = _plain_matrices(x, w)
        if dims is not None and dout_dtype is x.dtype and dout_shape == (dims[0], dims[2]):  # the common case
            n, d, m = dims
            return {"n": n, "d": d, "m": m, "dtype": dout_dtype, "x": (x, False), "w": (w, False),
                    "dx": np.empty((n, d), dout_dtype), "dw": np.empty((d, m), dout_dtype),
                    "db": np.empty(m, dout_dtype)}
    if not isinstance(cache, (tuple, list)) or len(cache) != 3:
        raise ValueError(
            f"{func}: cache must be the (x, w, b) tuple returned by affine_forward, "
            f"got {type(cache).__name__}"
        )
    xa = as_float_array(cache[0], func, "cache x")
    wa = as_float_array(cache[1], func, "cache w")
    n, d, m = _affine_operands(func, xa, wa)
    if dout_shape != (n, m):
        raise ValueError(f"{func}: dout has shape {dout_shape} but affine_forward's output for x {xa.shape} "
                         f"and w {wa.shape} needs shape {(n, m)}")
    dtype = np.result_type(dout_dtype, xa, wa)
    (dx, dw, db), _ = prepare_outputs(
        func, (("dx", dx, xa.shape, dtype), ("dw", dw, (d, m), dtype), ("db", db, (m,), dout_dtype)),
        lambda: {"cache x": xa, "cache w": wa, **read})
    x_op, x_is_t = _blas_operand(_as_matrix(xa, n, d), dtype)
    w_op, w_is_t = _blas_operand(wa, dtype)
    return {"n": n, "d": d, "m": m, "dtype": dtype, "x": (x_op, x_is_t), "w": (w_op, w_is_t),
            "dx": dx, "dw": dw, "db": db}


def affine_gradients(func: str, dout: ArrayLike, cache: Any, relu_mask: ReluMask | None,
                     dx: Any, dw: Any, db: Any) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Gradients of the affine layer whose cache is ``cache`` = (x, w, b),
    into checked (or new) dx, dw, db. With ``relu_mask``, dout is the
    gradient of the ReLU that followed it, applied in the same pass as db."""
    douta = as_float_array(dout, func, "dout")
    plan = affine_gradient_plan(func, douta.shape, douta.dtype, cache, dx, dw, db, {"dout": douta})
    n, d, m, dtype = plan["n"], plan["d"], plan["m"], plan["dtype"]
    if relu_mask is None:
        kept = NO_MASK_2D
    else:
        relu_mask.check(func)
        check_shape(relu_mask.mask, (n, m), func, "cache mask", "dout of shape {}", (n, m))
        kept = relu_mask.mask
    (x_op, x_is_t), (w_op, w_is_t) = plan["x"], plan["w"]
    dout_c, dx = np.ascontiguousarray(douta, dtype=dtype), plan["dx"].reshape(n, d)
    if not (x_is_t or w_is_t) and _affine_backward.small(n * m):
        affine_gradients_plain(blas_int_zero(), dout_c, kept, x_op, w_op, dx, plan["dw"], plan["db"])
    else:
        dpre = np.empty((n, m) if relu_mask is not None else (0, 0), dtype=dtype)
        _affine_backward(n * m, blas_int_zero(), dout_c, kept, x_op, x_is_t, w_op, w_is_t, n_row_parts(n), dpre,
                         dx, plan["dw"], plan["db"])
    return plan["dx"], plan["dw"], plan["db"]


def affine_backward(dout: ArrayLike, cache: AffineCache, *, dx: Any = None, dw: Any = None,
                    db: Any = None) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Backward pass of an affine layer.

    Parameters
    ----------
    dout : array, shape (N, M)
        Upstream gradient.
    cache : tuple
        ``(x, w, b)`` from :func:`affine_forward`.
    dx, dw, db : ndarrays, optional
        Where to write the gradients, each exactly its result's shape and
        dtype, C-contiguous, writeable, and sharing memory with no input
        and no other output (else ValueError).

    Returns
    -------
    dx : ndarray, x's shape
        ``dout @ w.T`` reshaped to x's shape.
    dw : ndarray, shape (D, M)
        ``x.reshape(N, D).T @ dout``.
    db : ndarray, shape (M,)
        ``dout`` summed over rows (in dout's dtype).

    Examples
    --------
    >>> import numpy as np, fastlayers
    >>> out, cache = fastlayers.affine_forward(np.ones((2, 3)), np.ones((3, 4)), np.zeros(4))
    >>> dx, dw, db = fastlayers.affine_backward(np.ones((2, 4)), cache)
    >>> dx.shape, dw.shape, db
    ((2, 3), (3, 4), array([2., 2., 2., 2.]))
    """
    if dx is None and dw is None and db is None:  # as in affine_forward: small common calls skip the checks
        gradients = small_plain_gradients(dout, cache)
        if gradients is not None:
            return gradients
    return affine_gradients("affine_backward", dout, cache, None, dx, dw, db)


def _flat_pair(first: np.ndarray, second: np.ndarray, out_dtype: np.dtype) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Flat views of ``first`` and ``second`` in one memory order, and an output.

    The order is Fortran when ``first`` is Fortran-contiguous (and not C),
    else C; an input that is not contiguous in that order is copied.
    Returns (first_flat, second_flat, out, out_flat).
    """
    if first.flags.c_contiguous and second.flags.c_contiguous:  # the common case, kept cheap
        out = np.empty(first.shape, dtype=out_dtype)
        return first.ravel(), second.ravel(), out, out.ravel()
    order = "F" if first.flags.f_contiguous and not first.flags.c_contiguous else "C"
    first = np.asarray(first, order=order)
    second = np.asarray(second, order=order)
    out = np.empty(first.shape, dtype=out_dtype, order=order)
    return first.reshape(-1, order=order), second.reshape(-1, order=order), out, out.reshape(-1, order=order)


def _c_flat(array: np.ndarray) -> np.ndarray:
    """A flat C-order view of ``array`` (a copy if it is not C-contiguous)."""
    return np.ascontiguousarray(array).reshape(-1)


def relu_forward(x: ArrayLike, *, out: Any = None) -> tuple[FloatArray, Any]:
    """Forward pass of a layer of rectified linear units.

    Parameters
    ----------
    x : array, any shape
    out : ndarray, optional
        Where to write the result: exactly x's shape and the result dtype,
        C-contiguous and writeable. It may be x itself (an in-place ReLU);
        any other overlap with x is a ValueError.

    Returns
    -------
    out : ndarray, x's shape and dtype
        x with entries ``< 0`` set to 0; NaN and -0.0 pass through unchanged.
        Integer and bool inputs give float64 (the seed page keeps them integral).
    cache : x itself, for :func:`relu_backward`; after an in-place call,
        whose x is overwritten, a :class:`ReluMask` of ``x >= 0`` instead.

    Examples
    --------
    >>> import numpy as np, fastlayers
    >>> out, cache = fastlayers.relu_forward(np.array([-2.0, -0.0, 0.5, np.nan]))
    >>> out
    array([ 0. , -0. ,  0.5,  nan])
    """
    func = "relu_forward"
    # as_float_array's common case without its call: 1.58-1.77 -> 1.40-1.63
    # us at 64x100 float32 (BENCHMARKS.md, session 16).
    xa = x if type(x) is np.ndarray and (x.dtype is FLOAT32 or x.dtype is FLOAT64) else as_float_array(x, func, "x")
    if out is None:
        if xa.flags.c_contiguous:  # the common case, without _flat_pair's call (a quarter of a small call)
            result = np.empty(xa.shape, dtype=xa.dtype)  # C order, so ravel() is a view
            if _relu_forward.small(xa.nbytes):  # the serial twin's short entry: 0.2 of 2 us at 64x100
                relu_forward_plain(xa, result)
            else:
                _relu_forward(xa.nbytes, xa.ravel(), result.ravel(), NO_MASK_1D, fresh_pages(result))
            return result, x
        x_flat, _, result, out_flat = _flat_pair(xa, xa, xa.dtype)
        _relu_forward(xa.nbytes, x_flat, out_flat, NO_MASK_1D, fresh_pages(result))
        return result, x
    (result,), in_place = prepare_outputs(func, (("out", out, xa.shape, xa.dtype),), lambda: {"x": xa},
                                        (("out", "x"),))
    if in_place:
        mask = np.empty(xa.shape, dtype=np.bool_)
        _relu_forward(xa.nbytes, result.reshape(-1), result.reshape(-1), mask.reshape(-1), False)
        return result, ReluMask(mask)
    _relu_forward(xa.nbytes, _c_flat(xa), result.reshape(-1), NO_MASK_1D, False)
    return result, x


def relu_backward(dout: ArrayLike, cache: Any, *, dx: Any = None) -> FloatArray:
    """Backward pass of a ReLU layer: ``dx = dout * (x >= 0)``.

    Parameters
    ----------
    dout : array, any shape
        Upstream gradient.
    cache : array of dout's shape, or ReluMask
        The input x of :func:`relu_forward` (or the mask an in-place
        forward returned).
    dx : ndarray, optional
        Where to write the result: exactly dout's shape and dtype,
        C-contiguous and writeable. It may be dout or the cached x itself
        (in place); any other overlap is a ValueError.

    Returns
    -------
    dx : ndarray, dout's shape and dtype
        Computed as a product, so NaN and Inf in dout propagate as in NumPy
        (Inf where x < 0 gives NaN).

    Examples
    --------
    >>> import numpy as np, fastlayers
    >>> out, cache = fastlayers.relu_forward(np.array([-1.0, 0.0, 2.0]))
    >>> fastlayers.relu_backward(np.array([5.0, 5.0, 5.0]), cache)
    array([0., 5., 5.])
    """
    if dx is None and type(dout) is np.ndarray and type(cache) is np.ndarray:
        # The common small case, C-contiguous float arrays of one shape: the
        # serial twin's short entry, without the general checks (2.6 -> 2.0
        # us at 64x100 float32, BENCHMARKS.md session 10).
        dtype, x_dtype = dout.dtype, cache.dtype
        if ((dtype is FLOAT32 or dtype is FLOAT64) and (x_dtype is FLOAT32 or x_dtype is FLOAT64)
                and dout.shape == cache.shape and _relu_backward.small(dout.nbytes)
                and dout.flags.c_contiguous and cache.flags.c_contiguous):
            result = np.empty(dout.shape, dtype)
            relu_backward_plain(dout, cache, result)
            return result
    func = "relu_backward"
    douta = as_float_array(dout, func, "dout")
    if isinstance(cache, ReluMask):
        cache.check(func)
        kept = cache.mask
        check_shape(douta, kept.shape, func, "dout", "the cache (relu_forward's mask of shape {})", kept.shape)
    else:
        kept = as_float_array(cache, func, "cache (relu_forward's x)")
        check_shape(douta, kept.shape, func, "dout", "the cache (relu_forward's x of shape {})", kept.shape)
    if dx is None:
        dout_flat, kept_flat, result, dx_flat = _flat_pair(douta, kept, douta.dtype)
        _relu_backward(douta.nbytes, dout_flat, kept_flat, dx_flat, fresh_pages(result))
        return result
    (result,), _ = prepare_outputs(func, (("dx", dx, douta.shape, douta.dtype),),
                                   lambda: {"dout": douta, "cache": kept},
                                   (("dx", "dout"), ("dx", "cache")))
    _relu_backward(douta.nbytes, _c_flat(douta), _c_flat(kept), result.reshape(-1), False)
    return result


def check_bn_param(func: str, bn_param: Any) -> None:
    """TypeError unless bn_param is a mutable mapping (a dict)."""
    # A plain dict is tested first: isinstance against the ABC costs 0.4 us a call.
    if type(bn_param) is not dict and not isinstance(bn_param, MutableMapping):
        raise TypeError(f"{func}: bn_param must be a dict, got {type(bn_param).__name__}")


def batchnorm_setup(func: str, shape: tuple[int, ...], dtype: np.dtype, gamma: ArrayLike, beta: ArrayLike,
                    bn_param: MutableMapping[str, Any], comm: Any = None, x_name: str = "x") -> dict[str, Any]:
    """Checked batch-norm arguments for an x of ``shape`` (2-D) and ``dtype``:
    gamma, beta, mode, eps, momentum, and the running statistics (zeros of
    x's dtype where bn_param has none). With ``comm`` a rank may hold no
    rows (the global batch is checked later). ``x_name`` names x in messages."""
    check_bn_param(func, bn_param)
    try:
        mode = bn_param["mode"]
    except KeyError:
        raise KeyError(f"{func}: bn_param['mode'] is required ('train' or 'test')") from None
    if not isinstance(mode, str) or mode not in ("train", "test"):
        raise ValueError(f'{func}: Invalid forward batchnorm mode "{mode}" in bn_param[\'mode\']; use "train" or "test"')
    n, d = shape
    gamma_a = as_float_array(gamma, func, "gamma")
    beta_a = as_float_array(beta, func, "beta")
    check_shape(gamma_a, (d,), func, "gamma", "{} of shape {}", x_name, shape)
    check_shape(beta_a, (d,), func, "beta", "{} of shape {}", x_name, shape)
    if comm is not None:
        check_communicator(func, comm)
    elif mode == "train" and n == 0:
        raise ValueError(f"{func}: {x_name} has shape {shape}; train mode needs N >= 1 rows for batch statistics")
    return {
        "gamma": gamma_a, "beta": beta_a, "mode": mode,
        "eps": _real_param(func, bn_param, "eps", 1e-5),
        "momentum": _real_param(func, bn_param, "momentum", 0.9),
        "running_mean": _running_stat(func, bn_param, "running_mean", d, dtype),
        "running_var": _running_stat(func, bn_param, "running_var", d, dtype),
    }


def _real_param(func: str, bn_param: MutableMapping[str, Any], key: str, default: float) -> float:
    value = bn_param.get(key, default)
    try:
        return float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{func}: bn_param[{key!r}] must be a real number, got {value!r}") from None


def _running_stat(func: str, bn_param: MutableMapping[str, Any], key: str, d: int, dtype: np.dtype) -> np.ndarray:
    if key not in bn_param:
        return np.zeros(d, dtype=dtype)
    stat = bn_param[key]
    if type(stat) is np.ndarray and (stat.dtype is FLOAT32 or stat.dtype is FLOAT64) and stat.shape == (d,):
        return stat  # the common case, the array a train-mode call stored, without building a name (0.3 us)
    name = f"bn_param['{key}']"  # key is a fixed identifier: no repr() needed
    stat = as_float_array(stat, func, name)
    check_shape(stat, (d,), func, name, "D = {} features", d)
    return stat


def batchnorm_apply(func: str, xa: np.ndarray, args: dict[str, Any], bn_param: MutableMapping[str, Any],
                    out: Any, relu: bool, comm: Any = None,
                    read: dict[str, np.ndarray] | None = None) -> tuple[np.ndarray, BatchNormCache | None]:
    """Batch norm of x (N, D) with ``batchnorm_setup``'s ``args`` into a
    checked (or new) ``out``, with a ReLU after it when ``relu``; rebinds
    bn_param's running statistics. With ``comm`` (train mode), the
    statistics are those of the batch that all ranks hold together.
    ``read``: other arrays the caller's computation reads, which out may
    not overlap either."""
    gamma_a, beta_a = args["gamma"], args["beta"]
    n, d = xa.shape
    running_mean, running_var = args["running_mean"], args["running_var"]
    train = args["mode"] == "train"
    dtype = np.result_type(xa, gamma_a, beta_a) if train else np.result_type(
        xa, gamma_a, beta_a, running_mean, running_var)
    # In test mode an in-place call is exact (each element is read before it
    # is written); in train mode the cache keeps x, which out would overwrite.
    fresh = False  # whether out is a new mapping, written from its end
    if out is None:  # np.empty without prepare_outputs' call: 0.2 us instead of 0.5
        out = np.empty((n, d), dtype)
        fresh = fresh_pages(out)
    else:
        (out,), _ = prepare_outputs(
            func, (("out", out, (n, d), dtype),),
            lambda: {"x": xa, "gamma": gamma_a, "beta": beta_a,
                     "bn_param['running_mean']": running_mean, "bn_param['running_var']": running_var,
                     **(read or {})},
            () if train else (("out", "x"),))
    x_c = np.ascontiguousarray(xa)
    cache = None
    relu_like = np.empty(0, dtype=out.dtype) if relu else None
    # A short batch's statistics and normalise in one call, stripe by stripe; else a pass for each.
    n_stripes = column_stripes(_batchnorm_train_stripes, n, d, xa.dtype.itemsize, 1) if train and comm is None else 0
    if train:
        # Zeros: with comm, a rank without rows contributes no statistics.
        center = np.zeros(d) if comm is not None else np.empty(d)
        var = np.zeros(d) if comm is not None else np.empty(d)
        # New arrays for the running statistics (the caller's are never
        # modified), in the dtype NumPy gives the seed's update.
        new_mean = np.empty(d, np.result_type(running_mean, xa))
        new_var = np.empty(d, np.result_type(running_var, xa))
        momentum = args["momentum"]
        n_parts = n_row_parts(n)
        if n_stripes:
            n_total = n
            _batchnorm_train_stripes(n * d, x_c, n_parts, n_stripes, gamma_a, beta_a, args["eps"], momentum,
                                     running_mean, running_var, center, var, new_mean, new_var, relu_like, out)
        else:  # the statistics' tasks: (row part, column range)
            tasks = (n_parts, n_column_splits(n_parts, d))
            work = parted_work(*tasks, n * d)
            if comm is None:
                n_total = n
                _batchnorm_stats(work, x_c, *tasks, center, var, momentum, running_mean, running_var, new_mean,
                                 new_var)
            else:
                counts = global_rows(func, comm, n, d, xa.dtype)
                n_total = int(counts.sum())
                if n > 0:  # this rank's statistics; the running update waits for the global ones
                    _batchnorm_stats(work, x_c, *tasks, center, var, momentum, running_mean, running_var,
                                     new_mean[:0], new_var[:0])
                merge_statistics(comm, counts, center, var)
                update_running(momentum, running_mean, running_var, center, var, x_c, new_mean, new_var)
        cache = BatchNormCache(x_c, gamma_a, beta_a, center, var, args["eps"], dtype, n_total, comm)
        running_mean, running_var = new_mean, new_var
    else:
        center = running_mean.astype(np.float64)
        var = running_var.astype(np.float64)
    if not n_stripes:
        _batchnorm_normalize(n * d, x_c, center, var, gamma_a, beta_a, args["eps"], relu_like, out, fresh)
    if train:
        bn_param["running_mean"] = running_mean
        bn_param["running_var"] = running_var
    else:  # as the seed: what was there stays (not our converted copy); zeros where nothing was
        bn_param.setdefault("running_mean", running_mean)
        bn_param.setdefault("running_var", running_var)
    return out, cache


def column_stripes(stripes: TwinKernel, n: int, d: int, itemsize: int, n_arrays: int) -> int:
    """How many column stripes batch norm's ``stripes`` kernel (the
    forward's or the backward's, whose passes both read ``n_arrays`` (n, d)
    arrays of ``itemsize`` bytes an element) runs in, or 0 where the passes
    over row parts run instead: ``n_column_stripes``, where the stripes'
    parallel twin wins or is forced ("Column stripes" in _twins.py). The
    threshold is tested first: ``n_column_stripes`` may ask numba for the
    thread count."""
    return n_column_stripes(n, d, itemsize, n_arrays) if stripes.parallel_wins(n * d, itemsize) else 0


def serial_batchnorm(passes: TwinKernel, stripes: TwinKernel, n: int, d: int, itemsize: int, n_arrays: int) -> bool:
    """Whether batch norm's ``passes`` over row parts run on their serial
    twin: under their threshold, and no ``column_stripes`` in parallel from
    a smaller size. Rows narrower than any stripe take the first exit,
    without ``column_stripes``' two calls (the small calls' case)."""
    return passes.small(n * d, itemsize) and (
        d < STRIPES_MIN_FEATURES or not column_stripes(stripes, n, d, itemsize, n_arrays))


def plain_train_params(gamma: Any, beta: Any, bn_param: Any, dtype: np.dtype,
                       shape: tuple[int, int]) -> tuple[float, float, Any, Any] | None:
    """(eps, momentum, running_mean, running_var) if a train-mode batch norm
    of a plain C-contiguous (N, D) array of ``dtype`` (one of NumPy's own
    float dtypes) is the common small case, else None: N >= 1 and few
    enough elements for the serial twins; bn_param a dict in train mode
    with float eps and momentum (or none) and running statistics of that
    dtype; gamma and beta (D,) arrays of it. That case skips the general
    checks and runs both passes in one kernel call
    (``batchnorm_train_plain``): at 64x100, 7.0 us instead of 9.3
    (BENCHMARKS.md, session 10). Anything else takes the general path,
    which converts it or says what is wrong with it.
    """
    n, d = shape
    # The statistics and the normalise share their threshold: one test for both.
    if (type(bn_param) is not dict or n == 0
            or not serial_batchnorm(_batchnorm_normalize, _batchnorm_train_stripes, n, d, dtype.itemsize, 1)):
        return None
    mode, eps, momentum = bn_param.get("mode"), bn_param.get("eps", 1e-5), bn_param.get("momentum", 0.9)
    if type(mode) is not str or mode != "train" or type(eps) is not float or type(momentum) is not float:
        return None
    running_mean, running_var = bn_param.get("running_mean"), bn_param.get("running_var")
    # Any layout of these (D,) arrays, as the general path passes them on:
    # 0.3 us less than _is_plain's four calls and contiguity tests.
    array, features = np.ndarray, (d,)
    if (type(gamma) is array and type(beta) is array and type(running_mean) is array and type(running_var) is array
            and gamma.dtype is dtype and beta.dtype is dtype and running_mean.dtype is dtype
            and running_var.dtype is dtype and gamma.shape == features and beta.shape == features
            and running_mean.shape == features and running_var.shape == features):
        return eps, momentum, running_mean, running_var
    return None


def train_plain(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, bn_param: dict[str, Any],
                params: tuple[float, float, Any, Any], relu: bool) -> tuple[np.ndarray, BatchNormCache]:
    """Train-mode batch norm of x (followed by a ReLU when ``relu``) for the
    case ``plain_train_params`` accepted and returned ``params``; rebinds
    bn_param's running statistics as the general path does."""
    eps, momentum, running_mean, running_var = params
    n, d = x.shape
    dtype = x.dtype
    result, mean, var = np.empty((n, d), dtype), np.empty(d), np.empty(d)
    new_mean, new_var = np.empty(d, dtype), np.empty(d, dtype)
    if relu:
        batchnorm_relu_train_plain(x, gamma, beta, eps, momentum, running_mean, running_var, mean, var, new_mean,
                                   new_var, np.empty(0, dtype), result)
    else:
        batchnorm_train_plain(x, gamma, beta, eps, momentum, running_mean, running_var, mean, var, new_mean,
                              new_var, result)
    bn_param["running_mean"] = new_mean
    bn_param["running_var"] = new_var
    return result, BatchNormCache(x, gamma, beta, mean, var, eps, dtype, n)


def batchnorm_forward(
    x: ArrayLike, gamma: ArrayLike, beta: ArrayLike, bn_param: MutableMapping[str, Any], *, out: Any = None,
    comm: Any = None,
) -> tuple[FloatArray, BatchNormCache | None]:
    """Forward pass of batch normalization.

    Parameters
    ----------
    x : array, shape (N, D)
    gamma, beta : arrays, shape (D,)
        Scale and shift.
    bn_param : dict
        ``'mode'``: ``'train'`` or ``'test'`` (required); ``'eps'`` (default
        1e-5); ``'momentum'`` (default 0.9); ``'running_mean'`` and
        ``'running_var'``, shape (D,) (default zeros of x's dtype).
    out : ndarray, optional
        Where to write the result: exactly shape (N, D) and the result
        dtype, C-contiguous and writeable, sharing memory with no input. In
        test mode it may be x itself; in train mode it may not, because the
        cache keeps x for the backward.
    comm : mpi4py communicator, optional
        Synchronised batch norm: in train mode the statistics (and in
        :func:`batchnorm_backward` the gradient's reductions) are those of
        the batch formed by every rank's x together, so every rank gets the
        outputs and gradients of one batch of the concatenated rows, and the
        same running statistics. Every rank of ``comm`` must make the call,
        with the same D and dtype; a rank may hold N = 0 rows. Test mode
        communicates nothing.

    Returns
    -------
    out : ndarray, shape (N, D)
        Train: ``gamma * (x - mean) / sqrt(var + eps) + beta`` with the batch's
        mean and biased variance; test: the same with the running statistics.
    cache : BatchNormCache or None
        Train mode: the cache for :func:`batchnorm_backward` (a read-only
        mapping with the seed page's keys); test mode: None.

    In train mode ``bn_param['running_mean']`` and ``['running_var']`` are
    rebound to new arrays ``momentum * running + (1 - momentum) * sample``;
    the arrays that were there are never modified.

    Examples
    --------
    >>> import numpy as np, fastlayers
    >>> x = np.array([[1.0, 2.0], [3.0, 6.0]])
    >>> bn_param = {"mode": "train"}
    >>> out, cache = fastlayers.batchnorm_forward(x, np.ones(2), np.zeros(2), bn_param)
    >>> np.round(out, 4)
    array([[-1., -1.],
           [ 1.,  1.]])
    >>> bn_param["running_mean"]
    array([0.2, 0.4])
    """
    if (out is None and comm is None and type(x) is np.ndarray and (x.dtype is FLOAT32 or x.dtype is FLOAT64)
            and x.ndim == 2 and x.flags.c_contiguous):
        params = plain_train_params(gamma, beta, bn_param, x.dtype, x.shape)
        if params is not None:
            return train_plain(x, gamma, beta, bn_param, params, relu=False)
    func = "batchnorm_forward"
    check_bn_param(func, bn_param)  # before x, as it was first
    xa = as_float_array(x, func, "x")
    check_ndim(xa, 2, func, "x", "(N, D)")
    args = batchnorm_setup(func, xa.shape, xa.dtype, gamma, beta, bn_param, comm)
    return batchnorm_apply(func, xa, args, bn_param, out, relu=False, comm=comm)


def batchnorm_gradients(func: str, dout: ArrayLike, cache: BatchNormCache, dx: Any, dgamma: Any, dbeta: Any,
                        relu_column_sums: np.ndarray | None = None) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Gradients of train-mode batch norm into checked (or new) arrays, for a
    ``cache`` the caller has checked (``BatchNormCache.check``: 0.9 us, once).

    With ``relu_column_sums`` (a (D,) array of dx's dtype), dout is the
    gradient of a ReLU that followed the batch norm, and the column sums
    of dx (an affine layer's db) are written there in the same pass."""
    douta = as_float_array(dout, func, "dout")
    check_shape(douta, cache.x.shape, func, "dout", "the forward pass's x")
    n, d = douta.shape
    dtype = np.result_type(douta, cache.dtype)
    relu = relu_column_sums is not None
    # dx may be dout or x itself: the second pass reads each element of both
    # before it writes it; the first pass has read all of dout by then.
    allocating_dx = dx is None
    if allocating_dx and dgamma is None and dbeta is None:  # without prepare_outputs' call: 0.5 us instead of 1.0
        dx, dgamma, dbeta = np.empty((n, d), dtype), np.empty(d, dtype), np.empty(d, douta.dtype)
    else:
        (dx, dgamma, dbeta), _ = prepare_outputs(
            func, (("dx", dx, (n, d), dtype), ("dgamma", dgamma, (d,), dtype), ("dbeta", dbeta, (d,), douta.dtype)),
            lambda: {"dout": douta, "cache x": cache.x, "cache gamma": cache.gamma, "cache beta": cache.beta},
            () if relu else (("dx", "dout"), ("dx", "cache x")))
    dout_c = np.ascontiguousarray(douta)
    relu_like = np.empty(0, dtype=cache.dtype) if relu else None
    n_parts = n_row_parts(n)
    column_sums = relu_column_sums if relu else NO_ARRAY_1D
    # A short batch's two passes in one call, stripe by stripe.
    n_stripes = column_stripes(_batchnorm_backward_stripes, n, d, dout_c.dtype.itemsize, 2) if cache.comm is None else 0
    if n_stripes:
        _batchnorm_backward_stripes(n * d, dout_c, cache.x, cache.mean, cache.var, cache.gamma, cache.beta, cache.eps,
                                    relu_like, n_parts, n_stripes, dx, dgamma, dbeta, column_sums)
        return dx, dgamma, dbeta
    n_splits = n_column_splits(n_parts, d)
    saved = (cache.x, cache.mean, cache.var, cache.gamma, cache.beta, cache.eps, relu_like, cache.n_total)
    outputs = (n_parts, n_splits, dx, dgamma, dbeta, column_sums, allocating_dx and fresh_pages(dx))
    sums = np.empty((2, d))
    work = parted_work(n_parts, n_splits, n * d)
    if cache.comm is None:
        _batchnorm_backward(work, dout_c, *saved, sums, True, True, *outputs)
    else:  # this rank's reductions, summed over the ranks, then dx
        _batchnorm_backward(work, dout_c, *saved, sums, True, False, *outputs)
        sums = sum_over_ranks(cache.comm, sums)
        _batchnorm_backward(work, dout_c, *saved, sums, False, True, *outputs)
    return dx, dgamma, dbeta


def batchnorm_backward(dout: ArrayLike, cache: BatchNormCache, *, dx: Any = None, dgamma: Any = None,
                       dbeta: Any = None) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Backward pass of train-mode batch normalization.

    Parameters
    ----------
    dout : array, shape (N, D)
        Upstream gradient.
    cache : BatchNormCache
        From :func:`batchnorm_forward` in train mode.
    dx, dgamma, dbeta : ndarrays, optional
        Where to write the gradients, each exactly its result's shape and
        dtype, C-contiguous and writeable. dx may be dout or the cached x
        itself (in place); any other overlap is a ValueError.

    Returns
    -------
    dx : ndarray, shape (N, D)
        ``gamma*ivar/N * (N*dout - sum(dout) - xhat*sum(dout*xhat))``.
    dgamma : ndarray, shape (D,)
        ``sum(dout * xhat)`` over rows.
    dbeta : ndarray, shape (D,)
        ``sum(dout)`` over rows (in dout's dtype).

    Examples
    --------
    >>> import numpy as np, fastlayers
    >>> x = np.array([[1.0, 2.0], [3.0, 6.0]])
    >>> out, cache = fastlayers.batchnorm_forward(x, np.ones(2), np.zeros(2), {"mode": "train"})
    >>> dx, dgamma, dbeta = fastlayers.batchnorm_backward(np.ones((2, 2)), cache)
    >>> dbeta
    array([2., 2.])
    """
    func = "batchnorm_backward"
    if not isinstance(cache, BatchNormCache):
        raise ValueError(
            f"{func}: cache must be the cache returned by fastlayers.batchnorm_forward "
            f"in train mode, got {type(cache).__name__}"
        )
    cache.check(func)
    x = cache.x
    dtype = x.dtype
    # As in batchnorm_forward: the common small case skips the general
    # checks (a plain dout of x's shape and of the cache's one dtype).
    if (dx is None and dgamma is None and dbeta is None and cache.comm is None and cache.dtype is dtype
            and serial_batchnorm(_batchnorm_backward, _batchnorm_backward_stripes, *x.shape, dtype.itemsize, 2)
            and _is_plain(dout, dtype, x.shape)):
        n, d = x.shape
        dx, dgamma, dbeta = np.empty((n, d), dtype), np.empty(d, dtype), np.empty(d, dtype)
        batchnorm_backward_plain(dout, x, cache.mean, cache.var, cache.gamma, cache.beta, cache.eps,
                                 cache.n_total, dx, dgamma, dbeta)
        return dx, dgamma, dbeta
    return batchnorm_gradients(func, dout, cache, dx, dgamma, dbeta)
