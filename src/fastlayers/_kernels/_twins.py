"""Serial and parallel twins of one kernel body, and the choice between them.

numba caches a dispatcher under its function's qualified name, so
``njit(cache=True)`` and ``njit(cache=True, parallel=True)`` applied to the
same function share one cache entry and the "serial" twin can end up
running the parallel code. Each twin is therefore compiled from its own
copy of the body's function object, with its own ``__qualname__``. In the
serial twin ``prange`` is plain ``range``; in the parallel one it is a
parallel loop. Bodies partition their reductions into parts that depend on
the input's shape only, so both twins compute the same bits.
"""

from __future__ import annotations

import contextlib
import os
import types
from collections.abc import Callable, Iterator
from typing import Any

import numba
import numpy as np
from numba.extending import register_jitable

from ._disk_cache import cached_njit

# Test hook: "serial" or "parallel" forces every kernel onto that path.
_forced_path: str | None = None


@contextlib.contextmanager
def forced_path(path: str | None) -> Iterator[None]:
    """Run every kernel on ``path`` ("serial", "parallel" or None = by size)."""
    global _forced_path
    if path not in (None, "serial", "parallel"):
        raise ValueError(f"path must be 'serial', 'parallel' or None, got {path!r}")
    previous, _forced_path = _forced_path, path
    try:
        yield
    finally:
        _forced_path = previous


def _renamed_copy(func: types.FunctionType, suffix: str) -> types.FunctionType:
    copy = types.FunctionType(
        func.__code__, func.__globals__, func.__name__ + suffix, func.__defaults__, func.__closure__
    )
    copy.__qualname__ = func.__qualname__ + suffix
    copy.__module__ = func.__module__
    copy.__doc__ = func.__doc__
    return copy


class TwinKernel:
    """A kernel body compiled twice, dispatched by the amount of work.

    ``threshold`` is the work from which the parallel twin wins on the
    machine we measured; below it a thread launch costs more than it saves.
    Work is counted in ``unit``: "bytes" of the array the kernel streams
    for the ReLU passes, which are bound by memory, so that float32 and
    float64 cross over at the same bytes; "elements" where the arithmetic
    per element is float64 whatever the dtype (batch norm) or the work is
    a product's (the affine layer). BENCHMARKS.md, session 14. Where the
    two dtypes still cross over apart (batch norm), ``threshold`` maps the
    itemsize of the kernel's first argument, 4 or 8, to its threshold.
    """

    def __init__(self, body: types.FunctionType, threshold: int | dict[int, int], unit: str) -> None:
        if unit not in ("bytes", "elements"):
            raise ValueError(f"unit must be 'bytes' or 'elements', got {unit!r}")
        if not isinstance(threshold, int) and sorted(threshold) != [4, 8]:
            raise ValueError(f"threshold must be an int or map itemsizes 4 and 8 to ints, got {threshold!r}")
        self.name = body.__name__.lstrip("_")
        self.threshold = threshold
        self.unit = unit
        # error_model="numpy": IEEE division (x/0 gives Inf or NaN like NumPy)
        # instead of Python's ZeroDivisionError, and no checks in the loops.
        # numba's cache keys on the body's source file, not on these options:
        # after changing them, delete the *.nbi/*.nbc files beside the kernels.
        self.serial = cached_njit(error_model="numpy")(_renamed_copy(body, "_serial"))
        self.parallel = cached_njit(parallel=True, error_model="numpy")(_renamed_copy(body, "_parallel"))

    def __call__(self, work: int, *args: Any) -> Any:
        """Run the twin that ``work`` (in ``unit``) calls for, or the forced one."""
        path = _forced_path
        if path is None:
            threshold = self.threshold
            if type(threshold) is not int:
                threshold = threshold[args[0].dtype.itemsize]
            if work < threshold:  # tested first: small calls pay for little more than one comparison
                return self.serial(*args)
            parallel = (_layer_calls or _bind_layer_calls())[0]() > 1
        else:
            parallel = path == "parallel"
        if parallel:
            return run_parallel(self.parallel, *args)
        return self.serial(*args)

    def threshold_for(self, itemsize: int | None) -> int:
        """The threshold for a first argument of ``itemsize`` bytes an element
        (which a single threshold does not need)."""
        threshold = self.threshold
        return threshold if type(threshold) is int else threshold[itemsize]

    def small(self, work: int, itemsize: int | None = None) -> bool:
        """Whether ``work`` is under the threshold for arrays of ``itemsize``
        and no path is forced onto the parallel twin: a caller with a
        shorter entry to the serial twin (fewer arguments for numba to
        type) may take it instead."""
        return work < self.threshold_for(itemsize) and _forced_path != "parallel"

    def parallel_wins(self, work: int, itemsize: int | None = None) -> bool:
        """Whether ``work`` is at or over the threshold for arrays of
        ``itemsize``, or the parallel path is forced (and the serial one
        is not): for a kernel whose callers run another kernel's serial
        twin below its threshold, so that its own is never compiled."""
        path = _forced_path
        return path == "parallel" or (path is None and work >= self.threshold_for(itemsize))


# numba's getters of the calling thread's thread count and parallel chunk
# size, and the chunk size's setter: the threading layer's C functions once
# it has started (0.11 us a call), since the public functions take a lock
# on every call (0.72 us); the public ones where numba lacks the private.
_layer_calls: tuple[Callable[[], int], Callable[[], int], Callable[[int], Any]] | None = None


def _bind_layer_calls() -> tuple[Callable[[], int], Callable[[], int], Callable[[int], Any]]:
    global _layer_calls
    numba.get_num_threads()  # starts the threading layer, which defines the C functions
    from numba.np.ufunc import parallel as layer

    _layer_calls = (getattr(layer, "_get_num_threads", numba.get_num_threads),
                    getattr(layer, "_get_parallel_chunksize", numba.get_parallel_chunksize),
                    getattr(layer, "_set_parallel_chunksize", numba.set_parallel_chunksize))
    return _layer_calls


def run_parallel(kernel: Callable[..., Any], *args: Any) -> Any:
    """``kernel(*args)``, a parallel kernel, under numba's default schedule.

    numba keeps a chunk size per calling thread (``numba.set_parallel_chunksize``)
    that every parallel loop it launches follows; the default, 0, gives
    each thread one chunk of each loop, and the kernels' loops are sized
    for it. A caller's own setting would reach them: under a chunk size of
    1, ReLU's loop over 2048x2048 elements became four million chunks
    (float64: 9.2 ms -> 720 ms; batch-norm backward 6.0 -> 14.9 ms); a
    size above a loop's length puts the loop on one thread. So the kernel
    runs at 0 and the caller's setting is restored after it. The bits do
    not depend on it either way.
    """
    _, chunk_size, set_chunk_size = _layer_calls or _bind_layer_calls()
    callers = chunk_size()
    if callers == 0:
        return kernel(*args)
    set_chunk_size(0)
    try:
        return kernel(*args)
    finally:
        set_chunk_size(callers)


def twin(threshold: int | dict[int, int], unit: str = "elements") -> Callable[[types.FunctionType], TwinKernel]:
    """Decorator: ``@twin(threshold)`` over a body that uses ``prange``."""

    def wrap(body: types.FunctionType) -> TwinKernel:
        return TwinKernel(body, threshold, unit)

    return wrap


@numba.njit(inline="always")
def part_bounds(n_rows: int, n_parts: int, part: int) -> tuple[int, int]:
    """Rows [start, stop) of ``part`` when n_rows are split into n_parts."""
    return part * n_rows // n_parts, (part + 1) * n_rows // n_parts


@register_jitable
def n_row_parts(n_rows: int) -> int:
    """How many row parts a reduction over ``n_rows`` rows is split into.

    Fixed by the shape alone (never by the thread count) so that results are
    bitwise reproducible; 32+ rows a part keeps the per-part partials small
    against the data, and 16 parts feed up to 16 threads. Measured
    (_batchnorm_stats, 2 cores, ms, 8/16/32 parts): 256x4096 float64
    0.284/0.346/0.408; 4096x4096 float64 7.69/8.10/8.18.
    """
    return max(1, min(16, n_rows // 32))


# Column splits: with fewer than 64 rows there is a single row part, and a
# loop over the parts would run on one thread (32x4096, serial / parallel
# us: backward float32 84.9/102.4, float64 211.4/237.7; session 14). So a
# single part's columns are split into ranges of at least SPLIT_MIN_COLUMNS,
# at most MAX_COLUMN_SPLITS of them, which the threads share: tasks of
# (part, column range). Each column still adds the same rows in the same
# order, so the bits are those of the whole part. The kernels take the
# split count from their caller, as they take the part count: the general
# path passes ``n_column_splits``, the serial short entries 1, since one
# thread gains nothing from it. On one thread, ranges of 1024 columns cost
# the statistics 0-2% and the backward's reductions 0-5%, ranges of 512 up
# to 8% and 16% (40x2048 to 32x8192, BENCHMARKS.md, session 15); on 2
# threads 2, 4 or 8 ranges ran alike. Several parts are the tasks
# themselves, whole rows each: split into column ranges, 16 parts of
# 4096x4096 float32 took 1.13-1.54x as long on 2 cores, and beyond the L3
# at 16 threads 1-19% longer (session 12).
SPLIT_MIN_COLUMNS = 1024
MAX_COLUMN_SPLITS = 16


def n_column_splits(n_parts: int, n_features: int) -> int:
    """Into how many column ranges each of ``n_parts`` row parts is split by
    the parallel twins (see "Column splits"): 1 unless there is a single part."""
    if n_parts > 1:
        return 1
    return max(1, min(MAX_COLUMN_SPLITS, n_features // SPLIT_MIN_COLUMNS))


# Column stripes: a short batch's batch norm (``_batchnorm_train_stripes``,
# ``_batchnorm_backward_stripes``) gives each task a stripe of STRIPE_COLUMNS
# to twice as many columns through both passes, so that the second pass
# reads the stripe again from the core's L2 rather than from L3 or memory.
# The second pass takes the row parts in reverse order: the rows the first
# pass read last, still in L2, are read first, before the pass's own
# writes evict them (each part sums its own dx, so the bits do not move).
# Measured (2 cores, BENCHMARKS.md sessions 17 and 18):
# - forward, kernels alone, statistics + normalise / stripes of 1024
#   columns, median of 31, us: float32 64x4096 101/78, 128x4096 200/164,
#   256x4096 398/335; float64 64x4096 180/135, 128x4096 330/284;
# - with the reverse order, the public functions, by row parts / stripes,
#   median of 21 alternating, us: forward float32 320x4096 503/432,
#   384x4096 590/529, 512x4096 726/688, 512x8192 1268/1287; float64
#   320x4096 787/697, 512x4096 1183/1165; backward float32 160x4096
#   410/350, 256x4096 570/550, 256x8192 1016/994; float64 160x4096
#   672/548, 256x4096 1008/964. In the same order, stripes had lost from
#   half the L2 on (backward float32 256x4096 584/625, session 17).
# So stripes run while the stripes of the arrays both passes read (x; dout
# and x for the backward) fit in the L2 of a core (2 MiB on the machine
# measured; STRIPE_MAX_BYTES is the L2 of the machine that runs, see
# ``core_l2_bytes``): stripes of 1024 to 2047 columns while they fit in half of it,
# else of 4 KiB to 8 KiB of a row (512 to 1023 float64 columns), up to 512
# rows for the forward and 256 for the backward. Where both fit in half the
# L2, the wider won at 32-64 float64 rows (forward 32x8192 212 against 225,
# backward 32x4096 145 against 151); filling the L2, the narrower won
# (backward float64 128x4096, two pairs of processes: 445-488 with 512
# columns, 513-520 with 1024). Stripes of 512 float32 columns (2 KiB rows)
# lost (forward 512x4096: 711 against 650, session 17; backward 256x4096:
# 572-586 against 513-516 by row parts, session 18).
# The serial twins gained nothing from stripes (forward 256x4096 float32
# 511-557 against 536-555 us). A stripe per task and no more tasks than
# stripes: where the threads outnumber the stripes, the row parts' tasks
# are kept (not measured beyond 2 threads).
# On a 2-core AMD EPYC (Zen 4) with 1 MiB of L2 a core (session 24), the
# stripes that fit 2 MiB but not 1 MiB lost to the passes over row parts:
# the public functions, stripes / row parts, median of 61 alternating,
# three processes, us: backward float64 256x4096 1264/1119, 1269/1175,
# 1020/937; float32 256x4096 430/391, 336/317, 547/519; float32 256x8192
# 982/846, 1252/1106, 1112/1078; forward float64 512x4096 1468/1249,
# 1429/1331, 1447/1362. So the limit is the L2 of the machine that runs.
STRIPE_COLUMNS = 1024
STRIPE_MIN_ROW_BYTES = 4096
STRIPES_MIN_FEATURES = 2 * STRIPE_COLUMNS
DEFAULT_L2_BYTES = 2 << 20  # the machine the stripes were first measured on


def core_l2_bytes(cache_dir: str = "/sys/devices/system/cpu/cpu0/cache") -> int:
    """The L2 cache of one core in bytes, as Linux reports it under
    ``cache_dir`` (the first level-2 data or unified cache listed there),
    or DEFAULT_L2_BYTES where it does not (other systems, or no such
    cache)."""
    try:
        entries = sorted(os.listdir(cache_dir))
    except OSError:
        return DEFAULT_L2_BYTES
    for entry in entries:
        try:
            with open(os.path.join(cache_dir, entry, "level")) as level, \
                    open(os.path.join(cache_dir, entry, "type")) as kind, \
                    open(os.path.join(cache_dir, entry, "size")) as size:
                if level.read().strip() != "2" or kind.read().strip() not in ("Data", "Unified"):
                    continue
                text = size.read().strip().upper()
        except OSError:
            continue
        scale = {"K": 1 << 10, "M": 1 << 20}.get(text[-1:], 1)
        digits = text[:-1] if scale > 1 else text
        if digits.isdigit() and int(digits) > 0:
            return int(digits) * scale
    return DEFAULT_L2_BYTES


STRIPE_MAX_BYTES = core_l2_bytes()


def n_column_stripes(n_rows: int, n_features: int, itemsize: int, n_arrays: int = 1) -> int:
    """Into how many column stripes a short batch's batch norm splits
    ``n_arrays`` (n_rows, n_features) arrays of ``itemsize`` bytes an
    element that both its passes read (see "Column stripes"), or 0 where
    the two passes over row parts serve better: stripes too large for L2
    even at 4 KiB of a row, fewer stripes than threads, or one thread."""
    if n_features < STRIPES_MIN_FEATURES:
        return 0
    # Stripes of STRIPE_COLUMNS to twice that within half the L2, else of 4 KiB of a row to twice that within it.
    for n_stripes, max_bytes in ((n_features // STRIPE_COLUMNS, STRIPE_MAX_BYTES // 2),
                                 (n_features * itemsize // STRIPE_MIN_ROW_BYTES, STRIPE_MAX_BYTES)):
        if n_arrays * n_rows * -(-n_features // n_stripes) * itemsize <= max_bytes:
            n_threads = (_layer_calls or _bind_layer_calls())[0]()
            return n_stripes if 2 <= n_threads <= n_stripes else 0
    return 0


@numba.njit(inline="always")
def task_bounds(task: int, n_splits: int, n_rows: int, n_parts: int, n_features: int
                ) -> tuple[int, int, int, int, int]:
    """Task ``task`` of n_parts x n_splits: its row part, the part's rows
    [start, stop), and its columns [first, last)."""
    part = task // n_splits
    start, stop = part_bounds(n_rows, n_parts, part)
    first, last = part_bounds(n_features, n_splits, task - part * n_splits)
    return part, start, stop, first, last


def parted_work(n_parts: int, n_splits: int, n_elements: int) -> int:
    """The work by which a kernel whose passes run over n_parts x n_splits
    (row part, column range) tasks (``n_row_parts``, ``n_column_splits``;
    the batch-norm statistics and backward) picks its twin: its elements,
    or 0 when there is a single task, which the parallel twin would run on
    one thread after a launch. The caller passes the counts it gives the
    kernel, rather than have them counted again here."""
    return n_elements if n_parts * n_splits > 1 else 0


# Per-part buffers: a kernel's per-part partials are allocated with
# np.empty, and each part zeroes its own row inside the part loop. In a
# parallel=True kernel np.zeros is a parallel loop of its own, one more
# thread launch per call: 2-5 us on 2 cores, 35-50 us at 16 threads under
# tbb (an empty prange of 16 iterations, BENCHMARKS.md session 12).
#
# Per-part partials are merged column chunk by column chunk: each chunk walks
# the parts in order over contiguous columns (a per-column walk down the parts
# strides a whole row per step, and measured 2-3x slower at 32 parts).
#
# Column ranges: a loop over columns [start, stop) of a row indexes it from
# a start numba cannot prove non-negative, so each access keeps a test for
# a negative (wraparound) index and LLVM leaves the loop scalar. The merges
# therefore take each range as views and walk them from 0: the same
# arithmetic in the same order, so the same bits. Measured (serial, 8 parts
# x 4096 columns, median of 41, us, indexed from start / views): the
# statistics' Chan merge 42/13, the parts' sums (sum_parts_chunk's loop)
# 12/3.9 (BENCHMARKS.md, session 13).
COLUMN_CHUNK = 512


@numba.njit(inline="always")
def column_chunk(n_features: int, chunk: int) -> tuple[int, int]:
    """Columns [start, stop) of ``chunk`` (COLUMN_CHUNK columns each)."""
    start = chunk * COLUMN_CHUNK
    return start, min(start + COLUMN_CHUNK, n_features)


@numba.njit(inline="always")
def n_column_chunks(n_features: int) -> int:
    return (n_features + COLUMN_CHUNK - 1) // COLUMN_CHUNK


@numba.njit(error_model="numpy")
def sum_parts_chunk(partials, totals, chunk: int) -> None:
    """Column chunk ``chunk`` of ``totals``: ``sum_parts`` over its columns."""
    start, stop = column_chunk(partials.shape[1], chunk)
    sum_parts(partials, totals, start, stop)


@numba.njit(error_model="numpy")
def sum_parts(partials, totals, start: int, stop: int) -> None:
    """Columns [start, stop) of ``totals``: the parts (rows of ``partials``)
    summed in part order in float64, then stored in totals' dtype. A
    function of its own: inlined into a parallel loop, a slice assignment
    failed numba's parfor lowering ("Illegal IR, del found"). The store is
    a loop, not ``totals[start:stop] = acc``: numba compiles that
    assignment's shape check with an error message that formats the
    shapes, and its string code took 3-4 s of a cold compile (a first
    small batchnorm_backward in float64, 7.5 s; session 19)."""
    acc = np.zeros(stop - start)
    for part in range(partials.shape[0]):
        row = partials[part, start:stop]  # a view walked from 0: see "Column ranges"
        for j in range(acc.size):
            acc[j] += row[j]
    chunk = totals[start:stop]
    for j in range(acc.size):
        chunk[j] = acc[j]


# Merges on the calling thread: merging per-part partials is light work
# (parts x columns, at most 1/32 of the pass over the rows that made them),
# and a parallel loop for it costs a thread launch of its own: 5-7 us on 2
# cores, 35-49 us at 16 threads under tbb (BENCHMARKS.md, session 12). Up
# to SERIAL_MERGE_MAX parts x columns (at the rates above, about 26 us of
# Chan merges or 8 us of sums on one core) the kernels merge in a plain
# loop. Measured (_batchnorm_stats, parallel twin, 2 cores, median of 41,
# us, parallel / plain merge, three rounds): 512x256 float32 29/26, 31/27,
# 31/26, float64 31/27, 32/27, 30/28; 1024x1024 float32 145/139, 142/125,
# 141/138; 256x4096 and 4096x4096 within the noise. The same bits either
# way. Not measured at 16 threads.
SERIAL_MERGE_MAX = 1 << 16


# Cache-line aligned vector loops. NumPy's arrays are 16-byte aligned
# (malloc's; large ones 16 bytes past a page boundary), and LLVM's
# vectorised loops start where the loop starts, without peeling for
# alignment: in a row that starts off a 64-byte line, every 64-byte vector
# straddles two lines. The passes that write an (N, D) output in four-row
# sweeps (the normalise, the backward's dx) therefore run each column
# range as a head, up to the column where the output's first row starts a
# line, and then the rest. Each element is computed by the same expression
# either way: the same bits. Measured (session 28, 256x4096, 2 threads,
# medians of 7 (forward) or 9 (backward) alternating blocks of 21, us,
# before / after):
# - batchnorm_forward into out=, (x, out) at page offsets: float32
#   (16, 16) 376/307, (688, 688) 364/302, (688, 656) 322/295, (16, 2064)
#   343/322, out on a line (688, 640) 285/284; float64 437/389, 459/403,
#   378/365, 375/351, 325/325;
# - batchnorm_backward into dx=, x at 0 and dout at 1024: float64, dx at
#   2064 776/723, 2080 766/694, 2096 653/626, on a line (2048) 637/625;
#   float32 within 1%;
# - 4096x4096, bound by memory: within 4% either way, one call 10% faster.
# Not done elsewhere (BENCHMARKS.md, session 28): the statistics split at
# x's line lost 2-5%; the ReLU forward, one run a thread from out's line,
# gained 5-10% at 256x4096 but lost 8-14% at 4096x4096, where memory
# bounds it, with x and out both off a line; the ReLU backward, from 2%
# slower to 6% faster.
LINE_BYTES = 64


@numba.njit(inline="always")
def elements_before_line(a, start: int, count: int) -> int:
    """How many of the ``count`` elements of the C-contiguous array ``a``
    from flat index ``start`` on come before the first that starts a cache
    line (``count`` if none does)."""
    address = np.intp(a.ctypes.data) + start * a.itemsize
    return min(count, (-address) % LINE_BYTES // a.itemsize)


# Fresh outputs written from their end. glibc's malloc maps every block of
# 32 MiB or more anew (its mmap threshold grows with freed mappings up to
# 32 MiB on 64-bit systems), so an output the layers allocate at that size
# is untouched memory: the first write to each page faults, and the kernel
# zeroes the whole page (2 MiB under NumPy's huge pages) before the write
# goes on. Writing such an output from its end measured faster, as it
# would if the zeroing runs front to back and leaves the page's end, not
# its start, in the core's cache (not traced in the kernel's source). So
# the passes that write such an output (the ReLU passes, the normalise,
# the backward's dx without column sums) take it in blocks of
# WALK_BLOCK_BYTES from its end, each block front to back: each thread's
# share of the blocks, from its end. The bench's copy does the same:
# glibc's memcpy copies backwards when the two arrays share a page offset,
# as two fresh mappings do (to avoid 4K aliasing), which is why its first
# touch cost less than any forward loop's (session 27). The same elements
# are computed by the same expressions: the same bits.
# Measured (session 29, 2 threads, public calls, 4096x4096, fresh outputs,
# ms, front to back / from the end): float32 ReLU forward 5.33/3.67,
# backward 6.07/4.62, batch-norm forward 7.90/6.49, backward 11.51/9.36;
# float64 11.89/10.53, 14.02/11.37, 14.23/11.41, 21.71/17.14. Blocks (the
# ReLU forward alone, float32): 16 KiB 5.26, 64 KiB 4.29, 256 KiB 4.05,
# 1 MiB 3.96 against 5.67 front to back; in a second run 256 KiB 5.17,
# 1 MiB 5.35, 2 MiB 5.58, 4 MiB 6.20 against 6.35. Into memory already in
# use (out=, dx=) the walk from the end lost 2-15% (65536x512 float32
# batch-norm forward 10.93 -> 12.55), so the layers ask for it (``fresh``)
# only for outputs they have just allocated and whose last page is not in
# memory yet (``_memory.fresh_pages``, which also applies the size: the
# kernels take its answer as it is).
WALK_BACK_MIN_BYTES = 32 << 20
WALK_BLOCK_BYTES = 256 << 10


# A flat pass front to back runs in FLAT_BLOCKS blocks, which any thread
# count shares out evenly, as it would a loop over the elements; one loop
# over blocks in either order keeps each pass a single parallel loop (two
# loops took the cold compile from 114-116 s to 139-142 s; one, 124.5 s).
# Blocks measured free (the ReLU forward's parallel twin, 2 threads,
# median of 9 blocks of 201, us, over the elements / 16, 64, 256 blocks):
# 192 Ki elements float32 13.8 / 13.4, 15.7, 13.9, float64 22.7 / 22.3,
# 22.6, 22.5; 1 Mi float32 49.9 / 49.4, 49.6, 49.9, float64 99.3 / 99.8,
# 98.8, 99.1 (session 29).
FLAT_BLOCKS = 64


@numba.njit(inline="always")
def flat_blocks(a, fresh: bool) -> tuple[int, int]:
    """(block count, elements a block) of a pass that writes the flat array
    ``a``: blocks of WALK_BLOCK_BYTES, taken from its end, when ``fresh``
    (``_memory.fresh_pages``), else FLAT_BLOCKS."""
    block = WALK_BLOCK_BYTES // a.itemsize if fresh else max(1, (a.size + FLAT_BLOCKS - 1) // FLAT_BLOCKS)
    return (a.size + block - 1) // block, block


@numba.njit(inline="always")
def walk_block_rows(a, row_elements: int) -> int:
    """Rows of ``row_elements`` elements of ``a`` in a block of
    WALK_BLOCK_BYTES (a multiple of four, for the sweeps)."""
    return max(4, WALK_BLOCK_BYTES // (row_elements * a.itemsize) // 4 * 4)


@numba.njit(inline="always")
def block_index(task: int, n_blocks: int, from_end: bool) -> int:
    """The block of n_blocks that task ``task`` takes: the same one, or
    counted from the end when ``from_end``."""
    index = np.intp(task)  # a parallel loop's index may be unsigned: made signed before it meets n_blocks
    return n_blocks - 1 - index if from_end else index


@numba.njit(inline="always")
def block_bounds(task: int, n_blocks: int, block: int, n: int, from_end: bool) -> tuple[int, int]:
    """Bounds within [0, n) of the ``block_index`` block of n_blocks of
    ``block`` items each (the last part-filled)."""
    start = block_index(task, n_blocks, from_end) * block
    return start, min(n, start + block)


@numba.njit(inline="always")
def merge_in_parallel(n_parts: int, n_features: int) -> bool:
    """Whether a merge of n_parts x n_features partials pays for a parallel loop."""
    return n_parts * n_features > SERIAL_MERGE_MAX
