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

from collections.abc import Sequence
from math import prod

import numba
import numpy as np
from numpy.typing import DTypeLike

from ._kernels._disk_cache import cached_njit

PAGE_BYTES = 4096
LINE_BYTES = 64
# Below this an output is a plain np.empty: placing it costs 1.1 us more
# (1.8 against 0.76 us), a third of a small call, and arrays that fit in
# L1 and L2 suffer little from either effect.
APART_MIN_BYTES = 1 << 18


@numba.njit
def page_offset_apart(offsets):
    """An offset within a page, a multiple of LINE_BYTES, as far as a line
    boundary allows from every one of ``offsets`` (a non-empty int64 array
    of offsets within a page): the middle of the widest gap between them,
    going round the page (the first of equally wide ones)."""
    ordered = np.sort(offsets)
    widest, start = -1, 0
    for k in range(ordered.size):
        following = ordered[k + 1] if k + 1 < ordered.size else ordered[0] + PAGE_BYTES
        if following - ordered[k] > widest:
            widest, start = following - ordered[k], ordered[k]
    return (start + widest // 2) // LINE_BYTES * LINE_BYTES % PAGE_BYTES


@cached_njit()
def start_apart(buffer, first, second):
    """Where in ``buffer`` an output should start to lie at
    ``page_offset_apart`` of the arrays ``first`` and ``second``: one numba
    call (0.3 us), where ``ndarray.ctypes.data`` alone costs 1.1 us an array."""
    offsets = np.array([first.ctypes.data % PAGE_BYTES, second.ctypes.data % PAGE_BYTES])
    return (page_offset_apart(offsets) - buffer.ctypes.data) % PAGE_BYTES


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


def empty_like(prototype: np.ndarray, dtype: DTypeLike = None, *, apart_from: Sequence[np.ndarray] | None = None
               ) -> np.ndarray:
    """A new C-contiguous array of ``prototype``'s shape and dtype (or
    ``dtype``), placed for fastlayers' kernels: 64-byte aligned, and at a
    page offset away from the arrays in ``apart_from`` (default: prototype
    itself; one array or a sequence of them), the inputs the kernel will
    stream while it writes this array.

    Made for ``out=`` and gradient arrays allocated once and reused: a
    forward's out apart from its x, a backward's dx apart from dout and x.
    An output at nearly its input's page offset runs slower (batch-norm
    forward, 256x4096 float64: 597 against 461 us). The layers place their
    own fresh large outputs this way. The array is a view of a buffer one
    page longer (its ``base``).

    Examples
    --------
    >>> import numpy as np, fastlayers
    >>> x = np.ones((256, 4096))
    >>> out = fastlayers.empty_like(x)
    >>> out.shape, out.dtype, out.ctypes.data % 64
    ((256, 4096), dtype('float64'), 0)
    """
    func = "empty_like"
    if not isinstance(prototype, np.ndarray):
        raise TypeError(f"{func}: prototype must be a NumPy array, got {type(prototype).__name__}")
    if apart_from is None:
        inputs: tuple[np.ndarray, ...] = (prototype,)
    elif isinstance(apart_from, np.ndarray):
        inputs = (apart_from,)
    else:
        inputs = tuple(apart_from)
    for array in inputs:
        if not isinstance(array, np.ndarray):
            raise TypeError(f"{func}: apart_from must be a NumPy array or hold NumPy arrays, got a "
                            f"{type(array).__name__}")
    dtype = prototype.dtype if dtype is None else np.dtype(dtype)
    if dtype.hasobject:  # a raw buffer is no place for object references
        raise TypeError(f"{func}: dtype must hold no Python objects, got {dtype}")
    nbytes = prototype.size * dtype.itemsize
    buffer = np.empty(nbytes + PAGE_BYTES, np.uint8)
    offsets = np.array([array.__array_interface__["data"][0] % PAGE_BYTES for array in inputs], dtype=np.int64)
    target = page_offset_apart(offsets) if offsets.size else 0
    start = (target - buffer.__array_interface__["data"][0]) % PAGE_BYTES
    return np.ndarray(prototype.shape, dtype, buffer, start)
