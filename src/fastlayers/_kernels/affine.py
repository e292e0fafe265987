"""Affine kernels: BLAS gemm with the bias fused, and the bias gradient.

Operands arrive C-contiguous; an operand that the caller held in Fortran
order arrives as its C-contiguous transpose with its ``*_is_t`` flag set,
and gemm reads it transposed instead of copying it. In column-major terms
a C-contiguous (r, c) array is a (c, r) matrix with leading dimension c.
"""

from __future__ import annotations

import numpy as np
from numba import prange

from ._blas import gemm
from ._twins import column_chunk, n_column_chunks, part_bounds, sum_parts, twin

# The bias fill and the db reduction are memory passes over (N, M) like the
# elementwise kernels; gemm threads itself.
AFFINE_THRESHOLD = 1 << 16


@twin(AFFINE_THRESHOLD)
def _affine_forward(blas_int, x, x_is_t, w, w_is_t, b, out):
    """out (N, M) = x (N, D) @ w (D, M) + b, as gemm over a bias-filled out."""
    n, m = out.shape
    d = x.shape[0] if x_is_t else x.shape[1]
    for i in prange(n):
        for j in range(m):
            out[i, j] = b[j]
    if n == 0 or m == 0 or d == 0:
        return
    # out^T (M x N) = op(w) (M x D) . op(x) (D x N), beta = 1 keeps the bias.
    gemm(blas_int, w_is_t, x_is_t, m, n, d,
         w, d if w_is_t else m,
         x, n if x_is_t else d,
         1.0, out, m)


@twin(AFFINE_THRESHOLD)
def _affine_backward(blas_int, dout, x, x_is_t, w, w_is_t, n_parts, dx, dw, db):
    """dx = dout @ w.T, dw = x.T @ dout, db = dout summed over rows."""
    n, m = dout.shape
    d = dw.shape[0]
    part_db = np.zeros((n_parts, m))
    for part in prange(n_parts):
        start, stop = part_bounds(n, n_parts, part)
        p_db = part_db[part]
        for i in range(start, stop):
            for j in range(m):
                p_db[j] += dout[i, j]
    for chunk in prange(n_column_chunks(m)):
        start, stop = column_chunk(m, chunk)
        totals = sum_parts(part_db, start, stop)
        for j in range(start, stop):
            db[j] = totals[j - start]
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
