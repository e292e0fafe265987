"""ReLU kernels over flat (1-D, contiguous) views: one pass each.

No reduction happens here, so every element is computed the same way on
any thread and the twins agree bitwise. The comparisons and the product
mirror NumPy's: ``v < 0`` is False for NaN and -0.0 (both pass through),
and the backward multiplies dout by a mask of 1 or 0 in dout's dtype, so
-1·0 = -0.0 and Inf·0 = NaN exactly as ``dout * (x >= 0)`` gives.

Every kernel reads element i before it writes element i, so an output may
be the very array it reads (in-place); the API layer refuses other overlaps.
"""

from __future__ import annotations

from numba import prange, types
from numba.extending import overload, register_jitable

from ._disk_cache import cached_njit
from ._twins import block_bounds, flat_blocks, twin

# Where the parallel twins start to win, in bytes of x (dout for the
# backward): the passes are bound by memory, and float32 and float64 cross
# over at the same bytes. Measured on the 2-core machine that runs the
# bench: the public functions with fresh outputs, every threshold set above
# any size (serial, short entries included) or to 0 (tbb;
# scripts/thresholds.py, median of 41, two runs; serial/parallel us at 384,
# 512, 640 and 768 KiB, run 1): forward float32 8.5/12.0, 11.1/13.3,
# 14.5/15.1, 22.2/19.6; float64 8.4/13.2, 11.1/13.2, 15.1/15.7, 20.6/17.4;
# backward (which also reads x) float32 12.9/14.9, 18.9/17.1, 30.3/21.1,
# 45.9/23.5; float64 12.1/15.2, 19.4/17.1, 34.3/20.0, 45.2/20.6 (run 2
# alike). (Sessions 5-12, on an AMD EPYC: 2^16 elements for both.)
RELU_FORWARD_THRESHOLD = 3 << 18
RELU_BACKWARD_THRESHOLD = 1 << 19


def passes(kept):
    """Whether the ReLU passes the gradient: ``x >= 0`` for an input value,
    the value itself for a boolean mask recorded by the forward. Kernels
    only: the overload below is the implementation, chosen by type."""
    raise NotImplementedError("passes() is called from numba kernels only")


@overload(passes)
def _passes_overload(kept):
    if isinstance(kept, types.Boolean):
        return lambda kept: kept
    return lambda kept: kept >= 0


@register_jitable
def relu_value(value, zero):
    """max(value, 0) with NaN and -0.0 passed (``value < 0`` is False for
    both): the ReLU of every kernel (here, the affine layer's epilogue,
    batch norm's ``relu_after``). ``zero`` is typed as the output, so LLVM
    vectorises a loop of this to vmaxps."""
    return zero if value < zero else value


@register_jitable
def _relu_span(x, out, zero):
    """out = max(x, 0) over two flat arrays (``relu_value``)."""
    for i in range(x.size):
        out[i] = relu_value(x[i], zero)


@register_jitable
def _relu_mask_span(x, out, mask, zero):
    """``_relu_span``, recording mask = x >= 0 as well."""
    for i in range(x.size):
        value = x[i]
        mask[i] = value >= zero
        out[i] = relu_value(value, zero)


@register_jitable
def _relu_backward_span(dout, kept, dx):
    """dx = dout * passes(kept) over flat arrays."""
    one = dx.dtype.type(1)
    zero = dx.dtype.type(0)
    for i in range(dout.size):
        dx[i] = dout[i] * (one if passes(kept[i]) else zero)


@twin(RELU_FORWARD_THRESHOLD, unit="bytes")
def _relu_forward(x, out, mask, fresh):
    """out = max(x, 0) with NaN and -0.0 passed; mask = x >= 0 when mask is
    not empty (the cache of an in-place forward, whose x is overwritten).
    In blocks (``flat_blocks``): from out's end when ``fresh`` (out is a new
    mapping, ``_memory.fresh_pages``); see "Fresh outputs written from their
    end" in _twins.py."""
    zero = out.dtype.type(0)
    n_blocks, block = flat_blocks(out, fresh)
    for task in prange(n_blocks):
        start, stop = block_bounds(task, n_blocks, block, out.size, fresh)
        if mask.size == 0:
            _relu_span(x[start:stop], out[start:stop], zero)
        else:
            _relu_mask_span(x[start:stop], out[start:stop], mask[start:stop], zero)


@twin(RELU_BACKWARD_THRESHOLD, unit="bytes")
def _relu_backward(dout, kept, dx, fresh):
    """dx = dout * passes(kept): kept is the forward's x, or its boolean mask;
    in blocks, as ``_relu_forward``."""
    n_blocks, block = flat_blocks(dx, fresh)
    for task in prange(n_blocks):
        start, stop = block_bounds(task, n_blocks, block, dx.size, fresh)
        _relu_backward_span(dout[start:stop], kept[start:stop], dx[start:stop])


@cached_njit(error_model="numpy")
def relu_forward_plain(x, out):
    """``_relu_forward``'s loop without the mask, for a C-contiguous x and
    out of one shape (any number of dimensions): two arguments instead of
    three, the flat views taken here rather than in Python, and no empty
    mask to allocate (0.1 of 0.9 us at 64x100 float32: BENCHMARKS.md,
    session 22)."""
    _relu_span(x.reshape(-1), out.reshape(-1), out.dtype.type(0))


@cached_njit(error_model="numpy")
def relu_backward_plain(dout, kept, dx):
    """``_relu_backward``'s loop for C-contiguous arrays of one shape (any
    number of dimensions), the flat views taken here rather than in
    Python."""
    _relu_backward_span(dout.reshape(-1), kept.reshape(-1), dx.reshape(-1))
