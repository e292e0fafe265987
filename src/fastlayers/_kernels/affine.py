"""Affine kernels: BLAS gemm with the bias fused, a ReLU epilogue, and the
bias gradient.

Operands arrive C-contiguous; an operand that the caller held in Fortran
order arrives as its C-contiguous transpose with its ``*_is_t`` flag set,
and gemm reads it transposed instead of copying it. In column-major terms
a C-contiguous (r, c) array is a (c, r) matrix with leading dimension c.
"""

from __future__ import annotations

import numpy as np
from numba import prange

from ._blas import gemm
from ._disk_cache import cached_njit
from ._twins import (
    merge_in_parallel,
    n_column_chunks,
    n_row_parts,
    part_bounds,
    sum_parts_chunk,
    twin,
)
from .relu import passes, relu_value

# The bias fill, the ReLU epilogue and the db reduction are memory passes
# over (N, M); gemm threads itself. Next to the gemm those passes are small,
# and a parallel pass right after a gemm shares the cores with OpenBLAS's
# threads, which keep spinning after the call (BENCHMARKS.md, session 5),
# so the parallel twin did not win below 2^22 output elements. Measured
# (float64, 2 cores, tbb, median of 21, each call after an untimed one;
# serial/parallel us, forward / with the ReLU / backward / with the ReLU):
# D = 64, M = 64, 2^16: 101/106, 110/116, 229/236, 312/319;
# 2^18: 511/541, 543/554, 1316/1328, 3547/3551. D = 1024, M = 1024, 2^20:
# 22946/23416, 23449/23768, 47093/47033, 49077/49556. D = 16, M = 1024,
# 2^20: 697/707, 858/868, 1243/1306, 1776/1809; 2^21: 1605/1578,
# 1914/1981, 3349/3405, 4370/4633; 2^22: 4220/4263, 5918/5980, 8673/8168,
# 20961/20468; 2^23: 8653/9014, 12680/12905, 17291/17182, 34931/35684.
AFFINE_THRESHOLD = 1 << 22

# Up to this many multiply-adds (N*D*M) the bias is added after a gemm with
# beta = 0 instead of being filled in before one with beta = 1: OpenBLAS's
# small-matrix kernels for beta = 0 skip reading the output. Measured
# (serial kernel in a numba loop, median of 9, us, beta = 1 / beta = 0 and a
# bias pass), within the limit: float32 64x100x10 2.45/2.08, 32x64x32
# 1.36/1.33, 64x128x16 2.64/2.60, 16x128x64 2.48/2.55; float64 64x100x10
# 2.94/2.82, 32x64x32 2.61/2.61, 64x128x16 4.99/4.98, 16x128x64 4.82/4.99.
# Above it, beta = 0 took from 0.85x (256x100x10 float32: narrow outputs
# kept gaining) to 1.07x (128x512x512 float32) the time of beta = 1. The two
# gave the same bits in every shape measured up to the limit; where D
# outgrows OpenBLAS's blocking of the sum they can differ, and beta = 0 and a
# bias pass then compute the seed's own order, (x @ w) + b.
BIAS_AFTER_MAX_PRODUCT = 1 << 17


@twin(AFFINE_THRESHOLD)
def _affine_forward(blas_int, x, x_is_t, w, w_is_t, b, relu_mask, out):
    """out (N, M) = x (N, D) @ w (D, M) + b, as gemm over a bias-filled out
    (a bias pass after a gemm for tiny products: BIAS_AFTER_MAX_PRODUCT).

    With a non-empty ``relu_mask`` (N, M) the ReLU follows in place, while
    the product is still in cache, and the mask records ``out >= 0`` for
    the backward (1 byte an element instead of keeping the pre-activation).
    """
    n, m = out.shape
    d = x.shape[0] if x_is_t else x.shape[1]
    bias_after = 0 < n * d * m <= BIAS_AFTER_MAX_PRODUCT
    if not bias_after:
        for i in prange(n):
            for j in range(m):
                out[i, j] = b[j]
    if n > 0 and m > 0 and d > 0:
        # out^T (M x N) = op(w) (M x D) . op(x) (D x N); beta = 1 keeps the bias filled in above.
        gemm(blas_int, w_is_t, x_is_t, m, n, d,
             w, d if w_is_t else m,
             x, n if x_is_t else d,
             0.0 if bias_after else 1.0, out, m)
    if bias_after:
        for i in prange(n):
            for j in range(m):
                out[i, j] += b[j]
    if relu_mask.size > 0:
        zero = out.dtype.type(0)
        for i in prange(n):
            for j in range(m):
                value = out[i, j]
                relu_mask[i, j] = value >= zero
                out[i, j] = relu_value(value, zero)


_affine_forward_serial = _affine_forward.serial


@cached_njit(error_model="numpy")
def affine_relu_forward_plain(blas_int, x, w, b, relu_mask, out):
    """``_affine_forward``'s serial twin for C-contiguous x (N, D) and w
    (D, M): six arguments instead of eight, as numba's dispatch costs about
    60 ns an argument."""
    _affine_forward_serial(blas_int, x, False, w, False, b, relu_mask, out)


@cached_njit(error_model="numpy")
def affine_forward_plain(blas_int, x, w, b, out):
    """``affine_relu_forward_plain`` without the ReLU: five arguments (it
    calls the twin itself: see ``batchnorm_train_plain``)."""
    _affine_forward_serial(blas_int, x, False, w, False, b, np.empty((0, 0), dtype=np.bool_), out)


@cached_njit(error_model="numpy")
def affine_input_gradients(blas_int, dout, x, x_is_t, w, w_is_t, dx, dw):
    """dx = dout @ w.T and dw = x.T @ dout: two gemm calls (BLAS threads them)."""
    n, m = dout.shape
    d = dw.shape[0]
    if m == 0:  # no output features: both products are empty sums
        dx[:] = 0.0
        dw[:] = 0.0
        return
    if n > 0 and d > 0:
        # dx^T (D x N) = op(w) (D x M) . dout^T (M x N)
        gemm(blas_int, not w_is_t, False, d, n, m, w, d if w_is_t else m, dout, m, 0.0, dx, d)
        # dw^T (M x D) = dout^T (M x N) . op(x) (N x D)
        gemm(blas_int, False, not x_is_t, m, d, n, dout, m, x, n if x_is_t else d, 0.0, dw, m)
    else:
        dw[:] = 0.0


@twin(AFFINE_THRESHOLD)
def _affine_backward(blas_int, dout, relu_kept, x, x_is_t, w, w_is_t, n_parts, dpre, dx, dw, db):
    """dx = g @ w.T, dw = x.T @ g, db = g summed over rows, where g is dout,
    or with a non-empty ``relu_kept`` (the ReLU's mask or input, (N, M)) the
    gradient through that ReLU, ``dout * passes(relu_kept)``, written to
    ``dpre`` in the same pass that sums db."""
    n, m = dout.shape
    gated = relu_kept.size > 0
    one = dpre.dtype.type(1)
    zero = dpre.dtype.type(0)
    part_db = np.empty((n_parts, m))  # each part zeroes its row: "Per-part buffers", _twins.py
    for part in prange(n_parts):
        start, stop = part_bounds(n, n_parts, part)
        p_db = part_db[part]
        p_db[:] = 0.0
        for i in range(start, stop):
            if gated:
                for j in range(m):
                    gradient = dout[i, j] * (one if passes(relu_kept[i, j]) else zero)
                    dpre[i, j] = gradient
                    p_db[j] += gradient
            else:
                for j in range(m):
                    p_db[j] += dout[i, j]
    if merge_in_parallel(n_parts, m):  # see "Merges on the calling thread" in _twins.py
        for chunk in prange(n_column_chunks(m)):
            sum_parts_chunk(part_db, db, chunk)
    else:
        for chunk in range(n_column_chunks(m)):
            sum_parts_chunk(part_db, db, chunk)
    if gated:
        affine_input_gradients(blas_int, dpre, x, x_is_t, w, w_is_t, dx, dw)
    else:
        affine_input_gradients(blas_int, dout, x, x_is_t, w, w_is_t, dx, dw)


_affine_backward_serial = _affine_backward.serial


@cached_njit(error_model="numpy")
def affine_gradients_plain(blas_int, dout, relu_kept, x, w, dx, dw, db):
    """``_affine_backward``'s serial twin for C-contiguous dout (N, M), x
    (N, D) and w (D, M), through the ReLU when ``relu_kept`` is not empty:
    eight arguments instead of thirteen (see ``affine_forward_plain``)."""
    n, m = dout.shape
    dpre = np.empty((n, m) if relu_kept.size > 0 else (0, 0), dtype=dout.dtype)
    _affine_backward_serial(blas_int, dout, relu_kept, x, False, w, False, n_row_parts(n), dpre, dx, dw, db)


@cached_njit(error_model="numpy")
def affine_backward_plain(blas_int, dout, x, w, dx, dw, db):
    """``affine_gradients_plain`` without the ReLU: one argument fewer for
    numba to type (0.1-0.15 us of a 7 us float32 call at 64x100x10). It
    calls the twin itself (see ``batchnorm_train_plain``)."""
    no_relu = np.empty((0, 0), dtype=np.bool_)
    _affine_backward_serial(blas_int, dout, no_relu, x, False, w, False, n_row_parts(dout.shape[0]),
                            np.empty((0, 0), dtype=dout.dtype), dx, dw, db)
