"""Fresh outputs placed where the kernels stream them fastest.

A kernel that reads its inputs and writes its output element by element,
in step, runs slower when the output lies at nearly the same offset within
a 4 KiB page as an input: the core cannot tell a load from an earlier
store to an address with the same low 12 bits until it compares the full
addresses ("4K aliasing"); and a 64-byte vector that straddles two cache
lines costs two accesses. ``np.empty`` gives what malloc gives: 16-byte
aligned, and consecutive arrays of one large size at nearly the same page
offset (a float64 256x4096 x at offset 688, and the layers' fresh outputs
at 640-736). Measured (AMD EPYC Zen 4, 256x4096, out= arrays 32 bytes
after x / 64-byte aligned and half a page from it, medians of 21 in 10
alternating blocks, us): batch-norm forward float32 334/269, float64
597/461; backward float32 424/344, float64 1020/825; ReLU forward float32
72/64, float64 150/136 (BENCHMARKS.md, session 25).
"""

from __future__ import annotations

from math import prod

import numba
import numpy as np

from ._kernels._disk_cache import cached_njit

PAGE_BYTES = 4096
LINE_BYTES = 64
# Below this an output is a plain np.empty: placing it costs 1.1 us more
# (1.8 against 0.76 us), a third of a small call, and arrays that fit in
# L1 and L2 suffer little from either effect.
APART_MIN_BYTES = 1 << 18


@numba.njit
def page_offset_apart(first, second):
    """An offset within a page, a multiple of LINE_BYTES, as far as a line
    boundary allows from the page offsets ``first`` and ``second``: the
    middle of the wider of the two gaps between them, going round the page
    (the first of two equal ones)."""
    low, high = min(first, second), max(first, second)
    inner, outer = high - low, low + PAGE_BYTES - high
    middle = low + inner // 2 if inner >= outer else high + outer // 2
    return middle // LINE_BYTES * LINE_BYTES % PAGE_BYTES


@cached_njit()
def start_apart(buffer, first, second):
    """Where in ``buffer`` an output should start to lie at
    ``page_offset_apart`` of the arrays ``first`` and ``second``: one numba
    call (0.3 us), where ``ndarray.ctypes.data`` alone costs 1.1 us an array."""
    target = page_offset_apart(first.ctypes.data % PAGE_BYTES, second.ctypes.data % PAGE_BYTES)
    return (target - buffer.ctypes.data) % PAGE_BYTES


def prepare_lookups(dtype: np.dtype) -> None:
    """Compile (or load) ``start_apart`` for the inputs the layers pass it:
    two flat arrays of ``dtype`` (the ReLU passes; the second may be a
    boolean mask) or two (N, D) ones (batch norm), C-contiguous and
    writeable: ``warmup``'s share."""
    flat, buffer = np.zeros(1, dtype), np.zeros(1, np.uint8)
    start_apart(buffer, flat, flat)
    start_apart(buffer, flat, np.zeros(1, np.bool_))
    start_apart(buffer, flat.reshape(1, 1), flat.reshape(1, 1))


def empty_apart(shape: tuple[int, ...], dtype: np.dtype, first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """``np.empty(shape, dtype)`` in C order for an output that a kernel
    writes while it streams ``first`` and ``second`` (the same array twice
    for a kernel of one input; 1-D or 2-D, so that the address lookup is
    compiled for few types): from APART_MIN_BYTES on, 64-byte aligned and at
    a page offset away from both inputs' (see the module docstring). It is
    then a view of a buffer one page longer."""
    dtype = np.dtype(dtype)
    nbytes = prod(shape) * dtype.itemsize
    if nbytes < APART_MIN_BYTES:
        return np.empty(shape, dtype)
    buffer = np.empty(nbytes + PAGE_BYTES, np.uint8)
    return np.ndarray(shape, dtype, buffer, start_apart(buffer, first, second))
