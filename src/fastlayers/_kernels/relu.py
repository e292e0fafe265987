"""ReLU kernels over flat (1-D, contiguous) views: one pass each.

No reduction happens here, so every element is computed the same way on
any thread and the twins agree bitwise. The comparisons and the product
mirror NumPy's: ``v < 0`` is False for NaN and -0.0 (both pass through),
and the backward multiplies dout by a mask of 1 or 0 in dout's dtype, so
-1·0 = -0.0 and Inf·0 = NaN exactly as ``dout * (x >= 0)`` gives.
"""

from __future__ import annotations

from numba import prange

from ._twins import twin

# Elementwise passes: the parallel twin wins from ~64k elements. Measured
# (ReLU forward, float64, 2 cores, tbb, median of 41; serial/parallel us):
# 32768: 7.0/9.1, 65536: 15.5/12.0, 131072: 29.2/23.0.
ELEMENTWISE_THRESHOLD = 1 << 16


@twin(ELEMENTWISE_THRESHOLD)
def _relu_forward(x, out):
    zero = out.dtype.type(0)
    for i in prange(x.size):
        value = x[i]
        out[i] = zero if value < zero else value  # typed zero: LLVM vectorises this to vmaxps


@twin(ELEMENTWISE_THRESHOLD)
def _relu_backward(dout, x, dx):
    one = dx.dtype.type(1)
    zero = dx.dtype.type(0)
    for i in prange(dout.size):
        dx[i] = dout[i] * (one if x[i] >= 0 else zero)
