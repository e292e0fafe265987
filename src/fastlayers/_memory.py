"""Arrays for ``out=`` placed where the kernels write them fastest.

A kernel that reads its inputs and writes its output element by element,
in step, runs slower when the output lies at nearly the same offset within
a 4 KiB page as an input: the core cannot tell a load from an earlier
store to an address with the same low 12 bits until it compares the full
addresses ("4K aliasing"); and a 64-byte vector that straddles two cache
lines costs two accesses. ``np.empty`` gives what malloc gives: 16-byte
aligned, and consecutive arrays of one large size at nearly the same page
offset (a float64 256x4096 x at offset 688, the layers' fresh outputs at
640-736). Measured (AMD EPYC Zen 4, 256x4096, out= arrays 32 bytes after
x / 64-byte aligned and half a page from it, medians of 21 in 10
alternating blocks, us): batch-norm forward float32 334/269, float64
597/461; backward float32 424/344, float64 1020/825; ReLU forward float32
72/64, float64 150/136 (BENCHMARKS.md, session 25).

The layers' own fresh outputs stay plain ``np.empty``: placing one takes a
buffer a page longer than the array, which no hole freed by an array of
the array's own size can hold. After NumPy code had freed such arrays (the
reference layers, alternating with ours), each placed float64 256x4096
output came from fresh pages: 485 page faults a call, and the batch-norm
forward took 1.8 ms instead of 0.98 (``faults.py``, session 25). An array
allocated once for ``out=`` pays that once.
"""

from __future__ import annotations

import ctypes
import mmap
from collections.abc import Callable, Sequence

import numpy as np
from numpy.typing import DTypeLike

from ._kernels._twins import LINE_BYTES, WALK_BACK_MIN_BYTES
from ._validation import data_address

PAGE_BYTES = 4096


def _load_mincore() -> Callable[..., int] | None:
    """The C library's ``mincore``, where there is one (Linux, macOS)."""
    try:
        mincore = ctypes.CDLL(None, use_errno=True).mincore
    except (OSError, AttributeError, TypeError):  # no C library to open by None (Windows), or no mincore
        return None
    mincore.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p)
    mincore.restype = ctypes.c_int
    return mincore


_MINCORE = _load_mincore()


def fresh_pages(array: np.ndarray) -> bool:
    """Whether a pass should write ``array``, an output just allocated, from
    its end: it is WALK_BACK_MIN_BYTES or more, and its last page is not in
    memory yet, as in a block malloc has just mapped from the system (see
    "Fresh outputs written from their end" in _kernels/_twins.py). Memory
    malloc reuses (under ``GLIBC_TUNABLES=glibc.malloc.mmap_max=0``, say)
    is in memory already, and front to back is faster there. Where there
    is no ``mincore``, an allocation that large is taken as fresh."""
    if array.nbytes < WALK_BACK_MIN_BYTES:
        return False
    if _MINCORE is None:
        return True
    last = data_address(array) + array.nbytes - 1
    status = ctypes.c_ubyte(0)
    if _MINCORE(last - last % mmap.PAGESIZE, 1, ctypes.byref(status)) != 0:
        return True
    return not status.value & 1


def page_offset_apart(offsets: Sequence[int]) -> int:
    """An offset within a page, a multiple of LINE_BYTES, as far as a line
    boundary allows from every one of ``offsets`` (offsets within a page,
    at least one): the middle of the widest gap between them, going round
    the page (the first of equally wide ones)."""
    ordered = sorted(offsets)
    widest, start = -1, 0
    for k, offset in enumerate(ordered):
        following = ordered[k + 1] if k + 1 < len(ordered) else ordered[0] + PAGE_BYTES
        if following - offset > widest:
            widest, start = following - offset, offset
    return (start + widest // 2) // LINE_BYTES * LINE_BYTES % PAGE_BYTES


def empty_like(prototype: np.ndarray, dtype: DTypeLike = None, *,
               apart_from: np.ndarray | Sequence[np.ndarray] | None = None) -> np.ndarray:
    """A new C-contiguous array of ``prototype``'s shape and dtype (or
    ``dtype``), placed for fastlayers' kernels: 64-byte aligned, and at a
    page offset away from the arrays in ``apart_from`` (default: prototype
    itself; one array or a sequence of them), the inputs the kernel will
    stream while it writes this array.

    Made for ``out=`` and gradient arrays allocated once and reused: a
    forward's out apart from its x, a backward's dx apart from dout and x.
    An output at nearly its input's page offset runs slower (batch-norm
    forward, 256x4096 float64: 597 against 461 us). The array is a view of
    a buffer one page longer (its ``base``).

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
    buffer = np.empty(prototype.size * dtype.itemsize + PAGE_BYTES, np.uint8)
    target = page_offset_apart([data_address(array) % PAGE_BYTES for array in inputs]) if inputs else 0
    return np.ndarray(prototype.shape, dtype, buffer, (target - data_address(buffer)) % PAGE_BYTES)
