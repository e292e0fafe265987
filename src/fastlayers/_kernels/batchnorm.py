"""Batch-norm kernels over C-contiguous (N, D) arrays.

Statistics are accumulated in float64 whatever the input dtype, over a fixed
partition of the rows into parts (``n_row_parts``): each part streams its
rows in blocks of eight, takes each block's mean and sum of squared
deviations in two passes over the values in registers, and merges the
blocks with Chan's formula; parts are then merged in part order. Nothing
depends on the thread count, so the serial and the parallel twin agree
bitwise.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import prange, types
from numba.extending import overload

from ._disk_cache import cached_njit
from ._twins import (
    block_bounds,
    block_index,
    column_chunk,
    elements_before_line,
    merge_in_parallel,
    n_column_chunks,
    n_row_parts,
    part_bounds,
    sum_parts,
    sum_parts_chunk,
    task_bounds,
    twin,
    walk_block_rows,
)
from .relu import passes, relu_value

# Where the parallel twins start to win, in elements of x, for float32 (4)
# and float64 (8) inputs (dout's dtype for the backward). The arithmetic is
# float64 either way, so the dtypes cross over nearer equal element counts
# than equal bytes, but not at the same ones. Measured on the 2-core
# machine that runs the bench: the public functions with fresh outputs,
# every threshold set above any size (serial, short entries included) or
# to 0 (tbb; scripts/thresholds.py, median of 41, two runs; session 15,
# with a single row part's columns split between the threads: see "Column
# splits" in _twins.py). Serial / parallel us at D = 64, 256 and 4096 (a
# single part), run 1; run 2 where it disagrees:
#   forward float32, 144 Ki: 83.4/78.6, 80.5/83.9, 84.6/89.9; 160 Ki:
#     91.1/81.6, 83.9/84.6, 86.2/95.7; 176 Ki: 101.9/84.6, 104.7/93.8,
#     107.6/101.9;
#   forward float64, 80 Ki: 61.0/58.6, 60.2/59.6, 82.9/91.0 (run 2:
#     62.1/63.0, 59.8/63.4, 92.7/103.0); 96 Ki: 78.8/67.1, 79.6/65.9,
#     99.4/97.7 (run 2 at D = 4096: 99.3/110.3, and 120.9/126.9 at 112 Ki);
#   backward float32, 96 Ki: 78.7/73.7, 72.8/74.4, 77.5/92.7; 112 Ki:
#     97.8/80.8, 92.7/79.7, 101.0/102.9 (run 2 at D = 4096: 108.1/105.9);
#   backward float64, 48 Ki: 49.3/59.3, 47.0/58.1, 68.7/79.9; 64 Ki:
#     77.9/71.8, 71.7/69.0, 97.8/95.0 (the first sweep of session 15).
# Each threshold is the smallest size from which the parallel twin won at
# every width in both runs, but for a single part near a tie: float32
# backward and float64 forward at D = 4096 came out 2-11% either way from
# one run to the next (BENCHMARKS.md, session 15). The statistics and the
# normalise share a threshold, so that both passes over x run on the same
# cores: with the statistics serial and the normalise parallel, a 512x256
# float64 forward took 57-74 us (median 66.3 over six processes) against
# 61-67 us (62.7) with both parallel (session 14).
STATS_THRESHOLD = {4: 11 << 14, 8: 3 << 15}
NORMALIZE_THRESHOLD = STATS_THRESHOLD
# The forward in column stripes (a short batch, D >= 2048: "Column stripes"
# in _twins.py), measured the same way (session 17, two runs; serial is the
# short entry's two serial twins). Serial / parallel us at D = 2048 and 4096:
#   float32, 112 Ki: 54.5/60.3, 70.3/65.7 (run 2: 57.5/59.5, 69.0/64.8);
#     128 Ki: 66.6/70.7, 80.1/68.3 (run 2: 70.1/66.9, 74.8/67.6);
#   float64, 64 Ki: 56.9/60.7, 72.3/66.7 (run 2: 62.3/60.0, 71.7/65.6);
#     80 Ki: 75.1/72.4, 97.4/84.4 (run 2: 73.4/67.5, 94.6/76.5).
# The float32 threshold is 128 Ki, where D = 2048 came out 6% either way.
# The backward in column stripes, against the short entry's serial twin:
#   float32, 80 Ki: 62.3/64.2, 77.9/76.8 (run 2: 66.4/68.5, 76.6/73.3);
#     96 Ki: 78.8/72.1, 90.0/79.7 (run 2: 78.2/78.7, 87.6/78.8);
#   float64, 32 Ki: 47.0/54.0, 58.8/60.4 (run 2: 45.2/50.5, 57.6/60.4);
#     48 Ki: 70.4/67.5, 73.6/68.2 (run 2: 67.4/60.4, 71.0/61.7).
# The float32 threshold is 96 Ki, where D = 2048 tied in run 2.
TRAIN_STRIPES_THRESHOLD = {4: 8 << 14, 8: 5 << 14}
BACKWARD_STRIPES_THRESHOLD = {4: 6 << 14, 8: 3 << 14}
BACKWARD_THRESHOLD = {4: 7 << 14, 8: 1 << 16}

# Four-row sweeps pay where the per-feature coefficients (three float64
# arrays) outgrow L1; narrower rows go row by row. Measured (normalise,
# parallel, float32, us, row by row / sweeps): D = 16: 193/290,
# D = 256: 197/202, D = 1024: 250/308 (float64 685/612), D = 4096: 206/134.
SWEEP_MIN_FEATURES = 2048
# Elements per task of the normalise pass (whole rows, at least four).
NORMALIZE_TASK_ELEMENTS = 1 << 14


@numba.njit(inline="always")
def _chan_weights(count, n_new):
    """Chan et al.'s weights for merging n_new values into count: (the merged
    count, the new mean's weight, the squared mean difference's weight)."""
    total = count + n_new
    weight = n_new / total
    return total, weight, count * weight


@numba.njit(inline="always")
def _chan_update(mean, m2, j, new_mean, new_m2, weight, cross):
    """Merge column j's (new_mean, new_m2) into (mean[j], m2[j]) with ``_chan_weights``' weights.

    ``delta * cross`` comes first: into nothing (count 0, cross 0) it is 0,
    where ``delta * delta`` overflows to Inf for means beyond 1.3e154 and
    Inf * 0 is NaN (a constant float64 column of 2**520 had a NaN variance
    and NaN outputs, where the seed page gives 0 and beta)."""
    delta = new_mean - mean[j]
    mean[j] += delta * weight
    m2[j] += new_m2 + delta * cross * delta


@numba.njit(inline="always")
def _chan_merge(count, n_new, mean, m2, new_mean, new_m2):
    """Merge (n_new, new_mean, new_m2) into (count, mean, m2), column by
    column, with Chan et al.'s formula; return the merged count. A range of
    columns is passed as views (see "Column ranges" in _twins.py)."""
    total, weight, cross = _chan_weights(count, n_new)
    for j in range(mean.size):
        _chan_update(mean, m2, j, new_mean[j], new_m2[j], weight, cross)
    return total


@numba.njit(inline="always")
def _four_rows(a, i, first, last):
    """Rows i to i + 3 of the 2-D array a, each as its slice [first, last):
    C-contiguous views that the loops over a column range walk from 0."""
    return a[i, first:last], a[i + 1, first:last], a[i + 2, first:last], a[i + 3, first:last]


# Four-row sweeps: the per-feature accumulators are as wide as a row (32 KiB
# of float64 at D = 4096, L1's size), so the reductions take four rows per
# sweep over the columns and load and store them once per four rows. Each
# column still adds its rows in row order: the bits are those of a
# row-by-row loop. Measured (serial statistics, then two passes over 512 KiB
# blocks, 256x4096, median of 41, us, row by row / four rows): float32
# 334/202, float64 445/272. The helpers of the statistics and the normalise
# are compiled as functions of their own: inlined into the loop over row
# tasks, the normalise's four-row loop came out scalar (3x slower serial at
# 256x4096 float32).
@numba.njit(error_model="numpy")
def _add_rows(acc, x, start, stop, first, last):
    """acc[j] += x[i, first + j] for the rows i in [start, stop), in row order."""
    i = start
    while i + 4 <= stop:
        r0, r1, r2, r3 = _four_rows(x, i, first, last)
        for j in range(acc.size):
            acc[j] = (((acc[j] + r0[j]) + r1[j]) + r2[j]) + r3[j]
        i += 4
    for k in range(i, stop):
        row = x[k, first:last]
        for j in range(acc.size):
            acc[j] += row[j]


@numba.njit(error_model="numpy")
def _add_squared_deviations(acc, x, center, start, stop, first, last):
    """acc[j] += (x[i, first + j] - center[j])**2 for the rows i in [start, stop), in row order."""
    i = start
    while i + 4 <= stop:
        r0, r1, r2, r3 = _four_rows(x, i, first, last)
        for j in range(acc.size):
            c = center[j]
            d0, d1, d2, d3 = r0[j] - c, r1[j] - c, r2[j] - c, r3[j] - c
            acc[j] = (((acc[j] + d0 * d0) + d1 * d1) + d2 * d2) + d3 * d3
        i += 4
    for k in range(i, stop):
        row = x[k, first:last]
        for j in range(acc.size):
            deviation = row[j] - center[j]
            acc[j] += deviation * deviation


# The statistics' blocks of eight rows: each is read from memory once, its
# second pass running on the values in registers. Before, blocks of 512 KiB
# were read twice, the second time from L2, which left memory idle during
# that pass. Measured (_batchnorm_stats, parallel, median of 15, us, 512 KiB
# blocks / eight rows): 4096x4096 float32 3035/1952, float64 5435/4146;
# 256x4096 float32 156/136, float64 198/119; 1000x1024 float32 133/127,
# float64 158/116. Blocks of four rows: 4096x4096 float32 2221 (eight:
# 1993 in that run), float64 4319 (4000). The 1-7 rows left over in a part
# are one more block, two-pass row-wise: column by column, they made
# 1000x1024 float32 (parts of 62 rows) 28% slower (198 against 155 us).
# fastmath "contract" lets LLVM fuse each multiply and add into one FMA
# (one rounding instead of two; nothing about NaN or Inf changes): the
# statistics are arithmetic-bound in cache. Measured (_part_moments alone,
# serial, median of 31, us, separate / fused): 256x4096 float32 181/145,
# float64 149/133; 4096x4096 float32 3747/3395, float64 5790/6019.
@numba.njit(error_model="numpy", fastmath={"contract"})
def _part_moments(mean, m2, x, start, stop, first, last):
    """Per-column mean and M2 (sum of squared deviations) of rows [start, stop)
    and columns [first, last) of x into mean and m2 (as wide as that range,
    float64, overwritten): blocks of eight rows, each two-pass over its
    values in registers, merged in row order with Chan's formula; the last
    1-7 rows make one more block, two-pass row-wise. Rows are taken as
    slices of the range, walked from 0 (see "Column ranges" in _twins.py)."""
    mean[:] = 0.0
    m2[:] = 0.0
    count = 0
    i = start
    while i + 8 <= stop:
        r0, r1, r2, r3 = _four_rows(x, i, first, last)
        r4, r5, r6, r7 = _four_rows(x, i + 4, first, last)
        total, weight, cross = _chan_weights(count, 8)
        for j in range(mean.size):
            a0, a1, a2, a3 = np.float64(r0[j]), np.float64(r1[j]), np.float64(r2[j]), np.float64(r3[j])
            a4, a5, a6, a7 = np.float64(r4[j]), np.float64(r5[j]), np.float64(r6[j]), np.float64(r7[j])
            block_mean = (((((((a0 + a1) + a2) + a3) + a4) + a5) + a6) + a7) * 0.125
            d0, d1, d2, d3 = a0 - block_mean, a1 - block_mean, a2 - block_mean, a3 - block_mean
            d4, d5, d6, d7 = a4 - block_mean, a5 - block_mean, a6 - block_mean, a7 - block_mean
            block_m2 = ((((((d0 * d0 + d1 * d1) + d2 * d2) + d3 * d3) + d4 * d4) + d5 * d5) + d6 * d6) + d7 * d7
            _chan_update(mean, m2, j, block_mean, block_m2, weight, cross)
        count = total
        i += 8
    if i < stop:
        block_mean = np.zeros(mean.size)
        _add_rows(block_mean, x, i, stop, first, last)
        block_mean /= stop - i
        block_m2 = np.zeros(mean.size)
        _add_squared_deviations(block_m2, x, block_mean, i, stop, first, last)
        _chan_merge(count, stop - i, mean, m2, block_mean, block_m2)


@numba.njit(error_model="numpy")
def _merge_moments(n_rows, part_mean, part_m2, mean, var, start, stop):
    """Columns [start, stop) of the row parts' moments merged in part order
    into mean and the biased var (a function of its own, as
    ``sum_parts``)."""
    n_parts = part_mean.shape[0]
    chunk_mean, chunk_var = mean[start:stop], var[start:stop]
    chunk_mean[:] = 0.0
    chunk_var[:] = 0.0
    count = 0
    for part in range(n_parts):
        part_start, part_stop = part_bounds(n_rows, n_parts, part)
        if part_stop > part_start:
            count = _chan_merge(count, part_stop - part_start, chunk_mean, chunk_var,
                                part_mean[part, start:stop], part_m2[part, start:stop])
    for j in range(chunk_var.size):
        chunk_var[j] /= n_rows


@twin(STATS_THRESHOLD)
def _batchnorm_stats(x, n_parts, n_splits, mean, var, momentum, running_mean, running_var, new_running_mean,
                     new_running_var):
    """mean[j], var[j] (biased) of x[:, j], two-pass quality, float64; and the
    running statistics' update ``momentum * running + (1 - momentum) * sample``
    into the new arrays, in the dtypes NumPy would use for it (momentum in
    the running array's dtype, the sample in x's). The tasks are n_parts
    row parts (``n_row_parts``) x n_splits column ranges (``n_column_splits``
    for the parallel twin; 1 from the serial entries: see "Column splits"
    in _twins.py)."""
    n_rows, n_features = x.shape
    part_mean = np.empty((n_parts, n_features))
    part_m2 = np.empty((n_parts, n_features))
    for task in prange(n_parts * n_splits):
        part, start, stop, first, last = task_bounds(task, n_splits, n_rows, n_parts, n_features)
        _part_moments(part_mean[part, first:last], part_m2[part, first:last], x, start, stop, first, last)
    if merge_in_parallel(n_parts, n_features):  # else on this thread: "Merges on the calling thread", _twins.py
        for chunk in prange(n_column_chunks(n_features)):
            start, stop = column_chunk(n_features, chunk)
            _merge_moments(n_rows, part_mean, part_m2, mean, var, start, stop)
    else:
        for chunk in range(n_column_chunks(n_features)):
            start, stop = column_chunk(n_features, chunk)
            _merge_moments(n_rows, part_mean, part_m2, mean, var, start, stop)
    _update_running(momentum, running_mean, running_var, mean, var, x, new_running_mean, new_running_var)


@numba.njit(inline="always")
def _update_running(momentum, running_mean, running_var, mean, var, sample_like, new_running_mean,
                    new_running_var):
    """new = momentum * running + (1 - momentum) * sample, in the dtypes NumPy
    uses for the seed's expression: momentum in the running array's dtype,
    the sample statistics rounded to x's (``sample_like``'s). Empty new
    arrays: no update (the statistics are not final yet)."""
    mean_kept = running_mean.dtype.type(momentum)
    var_kept = running_var.dtype.type(momentum)
    to_sample = sample_like.dtype.type
    sample_weight = to_sample(1.0 - momentum)
    for j in range(new_running_mean.size):
        new_running_mean[j] = running_mean[j] * mean_kept + to_sample(mean[j]) * sample_weight
        new_running_var[j] = running_var[j] * var_kept + to_sample(var[j]) * sample_weight


@cached_njit(error_model="numpy")
def update_running(momentum, running_mean, running_var, mean, var, sample_like, new_running_mean, new_running_var):
    """``_update_running`` on its own, for statistics merged outside the kernel."""
    _update_running(momentum, running_mean, running_var, mean, var, sample_like, new_running_mean, new_running_var)


@cached_njit(error_model="numpy")
def merge_rank_statistics(counts, means, m2s, mean, m2):
    """Merge per-rank (count, mean, M2) rows, in rank order, into mean and m2
    with Chan et al.'s formula (the parts' merge of ``_batchnorm_stats``);
    ranks without rows are skipped. Returns the total count."""
    mean[:] = 0.0
    m2[:] = 0.0
    count = 0
    for rank in range(counts.size):
        if counts[rank] > 0:
            count = _chan_merge(count, counts[rank], mean, m2, means[rank], m2s[rank])
    return count


@numba.njit(inline="always")
def _fill_scales(scale, gamma, var, eps):
    """scale[j] = gamma[j] / sqrt(var[j] + eps), float64: the normalise
    pass's multiplier, computed one way everywhere so recomputed outputs
    match (a range of features is passed as views)."""
    for j in range(scale.size):
        scale[j] = gamma[j] * (1.0 / np.sqrt(var[j] + eps))


@numba.njit(inline="always")
def _scales(gamma, var, eps):
    """``_fill_scales`` of every feature, into a new array."""
    scale = np.empty(var.size)
    _fill_scales(scale, gamma, var, eps)
    return scale


@numba.njit(inline="always")
def _normalized(x_value, center, scale, shift, out_like):
    """One output element, rounded to the output's dtype (``out_like``'s)."""
    return out_like.dtype.type((x_value - center) * scale + shift)


def relu_after(value, relu_like):
    """``value`` itself when ``relu_like`` is None; when it is an (empty)
    array, the ReLU of value in that array's dtype (NaN and -0.0 pass, as
    in relu_forward). The overload below is the implementation; it chooses
    when numba types the call, so the plain kernel carries no per-element
    test. Kernels only."""
    raise NotImplementedError("relu_after() is called from numba kernels only")


@overload(relu_after)
def _relu_after_overload(value, relu_like):
    if isinstance(relu_like, types.NoneType):
        return lambda value, relu_like: value

    def relu(value, relu_like):
        return relu_value(value, relu_like.dtype.type(0))

    return relu


@numba.njit(error_model="numpy")
def _normalize_rows(x, center, scale, shift, relu_like, out, start, stop, first, last):
    """out's rows [start, stop) over the columns [first, last): up to the
    column where out's row ``start`` starts a cache line, then the rest
    (see "Cache-line aligned vector loops" in _twins.py)."""
    split = first + elements_before_line(out, start * out.shape[1] + first, last - first)
    for range_first, range_last in ((first, split), (split, last)):
        _normalize_range(x, center, scale, shift, relu_like, out, start, stop, range_first, range_last)


@numba.njit(error_model="numpy")
def _normalize_range(x, center, scale, shift, relu_like, out, start, stop, first, last):
    """out's rows [start, stop) over the columns [first, last), four rows per
    sweep; rows are slices of the range, walked from 0 (see "Column ranges"
    in _twins.py)."""
    center, scale, shift = center[first:last], scale[first:last], shift[first:last]
    i = start
    while i + 4 <= stop:
        r0, r1, r2, r3 = _four_rows(x, i, first, last)
        o0, o1, o2, o3 = _four_rows(out, i, first, last)
        for j in range(center.size):
            c, s, b = center[j], scale[j], shift[j]
            o0[j] = relu_after(_normalized(r0[j], c, s, b, out), relu_like)
            o1[j] = relu_after(_normalized(r1[j], c, s, b, out), relu_like)
            o2[j] = relu_after(_normalized(r2[j], c, s, b, out), relu_like)
            o3[j] = relu_after(_normalized(r3[j], c, s, b, out), relu_like)
        i += 4
    for k in range(i, stop):
        x_row, out_row = x[k, first:last], out[k, first:last]
        for j in range(center.size):
            out_row[j] = relu_after(_normalized(x_row[j], center[j], scale[j], shift[j], out), relu_like)


@numba.njit(inline="always")
def _normalize_each_row(x, center, scale, shift, relu_like, out, start, stop):
    """out's rows [start, stop), one after the other (rows too narrow for sweeps)."""
    for i in range(start, stop):
        for j in range(x.shape[1]):
            out[i, j] = relu_after(_normalized(x[i, j], center[j], scale[j], shift[j], out), relu_like)


@twin(NORMALIZE_THRESHOLD)
def _batchnorm_normalize(x, center, var, gamma, beta, eps, relu_like, out, fresh):
    """out[i, j] = (x[i, j] - center[j]) * gamma[j] / sqrt(var[j] + eps) + beta[j],
    followed by a ReLU when ``relu_like`` is an array (see ``relu_after``).

    Four rows per sweep over the columns, so the per-feature coefficients
    are loaded once per four rows (measured, 256x4096 serial, us, row by
    row / four rows: float32 288/191, float64 620/381). The per-feature
    scale is computed here (O(D), float64) so that the Python layer makes
    no NumPy calls of its own for it. ``fresh``: out is a new mapping
    (``_memory.fresh_pages``), written from its end (see "Fresh outputs
    written from their end" in _twins.py).
    """
    n_rows, n_features = x.shape
    scale = _scales(gamma, var, eps)
    shift = beta.astype(np.float64)  # converted once here rather than per element: the same bits
    sweeps = n_features >= SWEEP_MIN_FEATURES
    if fresh:
        block_rows = walk_block_rows(out, n_features)
    elif sweeps:
        block_rows = max(4, NORMALIZE_TASK_ELEMENTS // n_features // 4 * 4)
    else:  # the coefficients stay in L1: row by row
        block_rows = 1
    n_blocks = (n_rows + block_rows - 1) // block_rows
    for task in prange(n_blocks):
        start, stop = block_bounds(task, n_blocks, block_rows, n_rows, fresh)
        if sweeps:
            _normalize_rows(x, center, scale, shift, relu_like, out, start, stop, 0, n_features)
        else:
            _normalize_each_row(x, center, scale, shift, relu_like, out, start, stop)


@twin(TRAIN_STRIPES_THRESHOLD)
def _batchnorm_train_stripes(x, n_parts, n_stripes, gamma, beta, eps, momentum, running_mean, running_var, mean,
                             var, new_running_mean, new_running_var, relu_like, out):
    """A short batch's train-mode forward, both passes in one call, each task
    a stripe of columns (``n_column_stripes``): the stripe's statistics over
    the n_parts row parts, merged in part order, then its normalise (and
    ReLU, as ``_batchnorm_normalize``) while the stripe is still in the
    core's L2, instead of a second read of x from L3 or memory. Each column
    adds the same rows in the same order and each element is normalised by
    the same expression as in ``_batchnorm_stats`` then
    ``_batchnorm_normalize``: the same bits, whatever the stripes. Needs
    D >= SWEEP_MIN_FEATURES (the normalise's four-row sweeps).

    Only the parallel twin is called: under the threshold, on one thread or
    on the forced serial path the two passes' serial twins run instead
    (stripes gained them nothing), so the serial twin is never compiled
    (cold compile 97.2 against 104.8 s when it was, one run each, session
    17)."""
    n_rows, n_features = x.shape
    part_mean = np.empty((n_parts, n_features))
    part_m2 = np.empty((n_parts, n_features))
    scale = np.empty(n_features)
    shift = np.empty(n_features)
    for stripe in prange(n_stripes):
        first, last = part_bounds(n_features, n_stripes, stripe)
        for part in range(n_parts):
            start, stop = part_bounds(n_rows, n_parts, part)
            _part_moments(part_mean[part, first:last], part_m2[part, first:last], x, start, stop, first, last)
        _merge_moments(n_rows, part_mean, part_m2, mean, var, first, last)
        _fill_scales(scale[first:last], gamma[first:last], var[first:last], eps)
        stripe_shift, stripe_beta = shift[first:last], beta[first:last]
        for j in range(stripe_shift.size):
            stripe_shift[j] = stripe_beta[j]
        for part in range(n_parts - 1, -1, -1):  # last read, first written: see "Column stripes" in _twins.py
            start, stop = part_bounds(n_rows, n_parts, part)
            _normalize_rows(x, mean, scale, shift, relu_like, out, start, stop, first, last)
    _update_running(momentum, running_mean, running_var, mean, var, x, new_running_mean, new_running_var)


_batchnorm_stats_serial = _batchnorm_stats.serial
_batchnorm_normalize_serial = _batchnorm_normalize.serial


@cached_njit(error_model="numpy")
def batchnorm_relu_train_plain(x, gamma, beta, eps, momentum, running_mean, running_var, mean, var,
                               new_running_mean, new_running_var, relu_like, out):
    """A train-mode forward's two serial twins, statistics then normalise
    (with the ReLU when ``relu_like`` is an array), in one call for a
    C-contiguous x: numba types 13 arguments once instead of 9 and 8 in two
    calls (about 60 ns an argument), and the row parts are counted here
    rather than in Python."""
    _batchnorm_stats_serial(x, n_row_parts(x.shape[0]), 1, mean, var, momentum, running_mean, running_var,
                            new_running_mean, new_running_var)
    _batchnorm_normalize_serial(x, mean, var, gamma, beta, eps, relu_like, out, False)


@cached_njit(error_model="numpy")
def batchnorm_train_plain(x, gamma, beta, eps, momentum, running_mean, running_var, mean, var, new_running_mean,
                          new_running_var, out):
    """``batchnorm_relu_train_plain`` without the ReLU: one argument fewer.
    It calls the twins itself: numba links and optimises every callee into
    its caller again, so an entry that called the other entry would compile
    both twins' bodies twice (measured 1.42 against 0.7 s, and 4.4 against
    3.0 s for the backward's entries)."""
    _batchnorm_stats_serial(x, n_row_parts(x.shape[0]), 1, mean, var, momentum, running_mean, running_var,
                            new_running_mean, new_running_var)
    _batchnorm_normalize_serial(x, mean, var, gamma, beta, eps, None, out, False)


def relu_coefficients(scale, beta, j, relu_like):
    """Feature j's (scale, shift), float64, for ``gradient_through_relu``:
    (scale[j], beta[j]) when ``relu_like`` is an array, unused zeros when it
    is None. Loaded once per sweep column into locals, which stores to dx
    cannot alias. Kernels only; the overload below is the implementation."""
    raise NotImplementedError("relu_coefficients() is called from numba kernels only")


@overload(relu_coefficients)
def _relu_coefficients_overload(scale, beta, j, relu_like):
    if isinstance(relu_like, types.NoneType):
        return lambda scale, beta, j, relu_like: (0.0, 0.0)
    return lambda scale, beta, j, relu_like: (scale[j], np.float64(beta[j]))


def gradient_through_relu(gradient, x_value, center, scale, shift, relu_like):
    """dout (float64) through the ReLU that followed the normalise, if any.

    ``relu_like`` is None (no ReLU: the gradient as it is) or an empty array
    of the forward output's dtype: the ReLU's input is then recomputed as
    the forward computed it, so the mask has the forward's own bits (scale
    and shift from ``relu_coefficients``). The overload below is the
    implementation; it chooses when numba types the call, so the plain
    kernel carries no per-element test. Kernels only.
    """
    raise NotImplementedError("gradient_through_relu() is called from numba kernels only")


@overload(gradient_through_relu)
def _gradient_through_relu_overload(gradient, x_value, center, scale, shift, relu_like):
    if isinstance(relu_like, types.NoneType):
        return lambda gradient, x_value, center, scale, shift, relu_like: gradient

    def through(gradient, x_value, center, scale, shift, relu_like):
        normalized = _normalized(x_value, center, scale, shift, relu_like)
        return gradient * (1.0 if passes(normalized) else 0.0)

    return through


def add_to(sums, j, value):
    """``sums[j] += value``, or nothing when ``sums`` is None. Kernels only;
    the overload below is the implementation."""
    raise NotImplementedError("add_to() is called from numba kernels only")


@overload(add_to)
def _add_to_overload(sums, j, value):
    if isinstance(sums, types.NoneType):
        return lambda sums, j, value: None

    def add(sums, j, value):
        sums[j] += value

    return add


# A function of its own, like the statistics' helpers. Inlined into the
# parallel twin's row-part loop (as it was until session 11) it gave the
# same bits in the same time (256x4096 float32, reduce pass, best of 61:
# 139-143 us inlined, 137-139 us as a function) but cost numba more to
# compile: 29.4 s against 21.1 s for the parallel twin's four signatures.
@numba.njit(error_model="numpy")
def _part_gradient_sums(sum_g, sum_g_dev, dout, x, mean, scale, beta, relu_like, start, stop, first, last):
    """sum_g[j] = sum of g[i, k] and sum_g_dev[j] = sum of g[i, k]·(x[i, k] - mean[k]),
    k = first + j, over the rows i in [start, stop), in row order, four rows
    per sweep (as ``_add_rows``); g is dout, through the ReLU if any. The
    sums are as wide as the column range [first, last), and overwritten."""
    sum_g[:] = 0.0
    sum_g_dev[:] = 0.0
    center, range_scale, range_beta = mean[first:last], scale[first:last], beta[first:last]
    i = start
    while i + 4 <= stop:
        g0, g1, g2, g3 = _four_rows(dout, i, first, last)
        x0, x1, x2, x3 = _four_rows(x, i, first, last)
        for j in range(sum_g.size):
            m = center[j]
            s, b = relu_coefficients(range_scale, range_beta, j, relu_like)
            a0 = gradient_through_relu(np.float64(g0[j]), x0[j], m, s, b, relu_like)
            a1 = gradient_through_relu(np.float64(g1[j]), x1[j], m, s, b, relu_like)
            a2 = gradient_through_relu(np.float64(g2[j]), x2[j], m, s, b, relu_like)
            a3 = gradient_through_relu(np.float64(g3[j]), x3[j], m, s, b, relu_like)
            sum_g[j] = (((sum_g[j] + a0) + a1) + a2) + a3
            sum_g_dev[j] = (((sum_g_dev[j] + a0 * (x0[j] - m)) + a1 * (x1[j] - m)) + a2 * (x2[j] - m)) + a3 * (
                x3[j] - m)
        i += 4
    for k in range(i, stop):
        dout_row, x_row = dout[k, first:last], x[k, first:last]
        for j in range(sum_g.size):
            s, b = relu_coefficients(range_scale, range_beta, j, relu_like)
            gradient = gradient_through_relu(np.float64(dout_row[j]), x_row[j], center[j], s, b, relu_like)
            sum_g[j] += gradient
            sum_g_dev[j] += gradient * (x_row[j] - center[j])


@numba.njit(error_model="numpy")
def _write_dx_rows(dout, x, mean, scale, beta, relu_like, gain, offset, slope, dx, column_sums, start, stop,
                   first, last):
    """The dx pass over rows [start, stop) and columns [first, last):
    dx[i, j] = gain[j]·(g - offset[j] - (x[i, j] - mean[j])·slope[j]), g
    being dout through the ReLU if any; with ``column_sums`` (not None, as
    wide as the column range), each dx element, as stored, is added to it
    in row order. Rows are slices of the range, walked from 0.

    Four rows per sweep over the columns where the per-feature arrays
    outgrow L1 (as the normalise), with the feature's coefficients in
    locals; the dx sums keep row order, so the bits are those of a
    row-by-row loop. Measured (_batchnorm_backward, whole, parallel, us,
    row by row / sweeps): 256x4096 float32 590/526, with the ReLU and the
    sums 874/725; 4096x4096 float32 16745/14947, with them 18522/18369,
    float64 26147/25612 and 30109/27895. Compiled as a function of its own,
    as the normalise's sweeps are: inlined, they measured 2x slower serial.
    The four rows' expressions are spelled out: moved into an inline
    helper, the ReLU variant ran 2x slower (256x4096 float32, parallel,
    725 -> 1337 us).
    """
    to_dx = dx.dtype.type
    center, range_scale, range_beta = mean[first:last], scale[first:last], beta[first:last]
    range_gain, range_offset, range_slope = gain[first:last], offset[first:last], slope[first:last]
    i = start
    if dx.shape[1] >= SWEEP_MIN_FEATURES:  # by the row width, as the normalise: see the docstring
        while i + 4 <= stop:
            g0, g1, g2, g3 = _four_rows(dout, i, first, last)
            x0, x1, x2, x3 = _four_rows(x, i, first, last)
            d0, d1, d2, d3 = _four_rows(dx, i, first, last)
            for j in range(center.size):
                m, gn, of, sl = center[j], range_gain[j], range_offset[j], range_slope[j]
                s, b = relu_coefficients(range_scale, range_beta, j, relu_like)
                v0 = to_dx(gn * (gradient_through_relu(np.float64(g0[j]), x0[j], m, s, b, relu_like) - of
                                 - (x0[j] - m) * sl))
                v1 = to_dx(gn * (gradient_through_relu(np.float64(g1[j]), x1[j], m, s, b, relu_like) - of
                                 - (x1[j] - m) * sl))
                v2 = to_dx(gn * (gradient_through_relu(np.float64(g2[j]), x2[j], m, s, b, relu_like) - of
                                 - (x2[j] - m) * sl))
                v3 = to_dx(gn * (gradient_through_relu(np.float64(g3[j]), x3[j], m, s, b, relu_like) - of
                                 - (x3[j] - m) * sl))
                d0[j], d1[j], d2[j], d3[j] = v0, v1, v2, v3
                add_to(column_sums, j, v0)
                add_to(column_sums, j, v1)
                add_to(column_sums, j, v2)
                add_to(column_sums, j, v3)
            i += 4
    for k in range(i, stop):
        dout_row, x_row, dx_row = dout[k, first:last], x[k, first:last], dx[k, first:last]
        for j in range(center.size):
            s, b = relu_coefficients(range_scale, range_beta, j, relu_like)
            gradient = gradient_through_relu(np.float64(dout_row[j]), x_row[j], center[j], s, b, relu_like)
            value = to_dx(range_gain[j] * (gradient - range_offset[j] - (x_row[j] - center[j]) * range_slope[j]))
            dx_row[j] = value
            add_to(column_sums, j, value)


@numba.njit(error_model="numpy")
def _write_dx_part(dout, x, mean, scale, beta, relu_like, gain, offset, slope, dx, part_sums, part, start, stop,
                   first, last):
    """``_write_dx_rows`` over row part ``part`` (rows [start, stop)) and the
    columns [first, last); with dx's column sums when ``part_sums`` has a
    row a part, into that part's row, zeroed first. Rows wide enough for
    four-row sweeps are written up to the column where dx's row ``start``
    starts a cache line, then the rest (see "Cache-line aligned vector
    loops" in _twins.py)."""
    split = first
    if dx.shape[1] >= SWEEP_MIN_FEATURES:
        split += elements_before_line(dx, start * dx.shape[1] + first, last - first)
    if part_sums.shape[0] > 0:
        task_sums = part_sums[part, first:last]
        task_sums[:] = 0.0
        for range_first, range_last in ((first, split), (split, last)):
            _write_dx_rows(dout, x, mean, scale, beta, relu_like, gain, offset, slope, dx,
                           task_sums[range_first - first:range_last - first], start, stop, range_first, range_last)
    else:
        for range_first, range_last in ((first, split), (split, last)):
            _write_dx_rows(dout, x, mean, scale, beta, relu_like, gain, offset, slope, dx, None, start, stop,
                           range_first, range_last)


@numba.njit(error_model="numpy")
def _gradient_coefficients(sums, var, gamma, eps, n_total, dgamma, dbeta, gain, offset, slope, first, last):
    """dgamma, dbeta and the dx pass's per-feature coefficients (gain,
    offset, slope) of the features [first, last) from the reductions
    ``sums`` over a batch of n_total rows."""
    for j in range(first, last):
        ivar = 1.0 / np.sqrt(var[j] + eps)
        dbeta[j] = sums[0, j]
        dgamma[j] = ivar * sums[1, j]
        gain[j] = gamma[j] * ivar
        offset[j] = sums[0, j] / n_total
        slope[j] = ivar * ivar * sums[1, j] / n_total
        # A feature whose sums are not finite (Inf or NaN in dout) has no
        # defined gradient: NaN across it, as the seed's 10 steps give
        # (their dmu is Inf - Inf), not the closed form's mix of NaN and +-Inf.
        if not (np.isfinite(offset[j]) and np.isfinite(slope[j])):
            offset[j] = np.nan


@twin(BACKWARD_THRESHOLD)
def _batchnorm_backward(dout, x, mean, var, gamma, beta, eps, relu_like, n_total, sums, reduce, apply, n_parts,
                        n_splits, dx, dgamma, dbeta, dx_column_sums, fresh):
    """dx, dgamma, dbeta of the train-mode forward over a batch of ``n_total``
    rows, in two passes over (N, D).

    With ``reduce``, the first pass writes this process's reductions to
    ``sums`` (2, D): sum_i g and sum_i g·(x - mean) per feature, float64,
    over fixed row parts merged in part order, where g is dout, or, when
    ``relu_like`` is not None, the gradient through the ReLU that followed
    the normalise (see ``gradient_through_relu``). With ``apply``, the
    closed form's per-feature coefficients come from ``sums`` (summed over
    every process holding part of the batch, in between, when there are
    several), and the second pass writes
    dx = gamma·ivar · (g - sum(g)/N - (x - mean)·ivar²·sum(g·(x - mean))/N).
    A non-empty ``dx_column_sums`` receives dx summed over rows (the bias
    gradient of an affine layer below), by the same parts as
    ``affine_backward``'s db. One process passes both flags: one call.
    Both passes run over n_parts row parts x n_splits column ranges, as
    ``_batchnorm_stats``. ``fresh``: dx is a new mapping, as for
    ``_batchnorm_normalize``.
    """
    n_rows, n_features = x.shape
    scale = _scales(gamma, var, eps) if relu_like is not None else np.empty(0)
    # Each task zeroes its own partials (see "Per-part buffers" in _twins.py).
    if reduce:
        part_dout = np.empty((n_parts, n_features))
        part_dout_xmu = np.empty((n_parts, n_features))
        for task in prange(n_parts * n_splits):
            part, start, stop, first, last = task_bounds(task, n_splits, n_rows, n_parts, n_features)
            _part_gradient_sums(part_dout[part, first:last], part_dout_xmu[part, first:last], dout, x, mean, scale,
                                beta, relu_like, start, stop, first, last)
        if merge_in_parallel(n_parts, n_features):
            for chunk in prange(n_column_chunks(n_features)):
                sum_parts_chunk(part_dout, sums[0], chunk)
                sum_parts_chunk(part_dout_xmu, sums[1], chunk)
        else:
            for chunk in range(n_column_chunks(n_features)):
                sum_parts_chunk(part_dout, sums[0], chunk)
                sum_parts_chunk(part_dout_xmu, sums[1], chunk)
    if not apply:
        return
    gain = np.empty(n_features)
    offset = np.empty(n_features)
    slope = np.empty(n_features)
    _gradient_coefficients(sums, var, gamma, eps, n_total, dgamma, dbeta, gain, offset, slope, 0, n_features)
    summing = dx_column_sums.size > 0
    part_sums = np.empty((n_parts if summing else 0, n_features))
    # A fresh dx from its end ("Fresh outputs written from their end", _twins.py): the tasks in reverse, each
    # part's rows in blocks from its end. Not with column sums, which add each part's rows in row order.
    from_end = fresh and not summing
    n_tasks = n_parts * n_splits
    for task in prange(n_tasks):
        part, start, stop, first, last = task_bounds(block_index(task, n_tasks, from_end), n_splits, n_rows, n_parts,
                                                     n_features)
        block_rows = walk_block_rows(dx, last - first) if from_end else max(1, stop - start)
        n_blocks = max(1, (stop - start + block_rows - 1) // block_rows)  # one for an empty part: its sums are zeroed
        for block in range(n_blocks):
            block_start, block_stop = block_bounds(block, n_blocks, block_rows, stop - start, from_end)
            _write_dx_part(dout, x, mean, scale, beta, relu_like, gain, offset, slope, dx, part_sums, part,
                           start + block_start, start + block_stop, first, last)
    if summing:
        if merge_in_parallel(n_parts, n_features):
            for chunk in prange(n_column_chunks(n_features)):
                sum_parts_chunk(part_sums, dx_column_sums, chunk)
        else:
            for chunk in range(n_column_chunks(n_features)):
                sum_parts_chunk(part_sums, dx_column_sums, chunk)


@twin(BACKWARD_STRIPES_THRESHOLD)
def _batchnorm_backward_stripes(dout, x, mean, var, gamma, beta, eps, relu_like, n_parts, n_stripes, dx, dgamma,
                                dbeta, dx_column_sums):
    """``_batchnorm_backward`` of one process's short batch (both passes, the
    column sums if ``dx_column_sums`` is not empty), each task a stripe of
    columns (``n_column_stripes``): the stripe's reductions over the n_parts
    row parts, summed in part order, then its dx while the stripe of dout
    and x is still in the core's L2. The same bits as ``_batchnorm_backward``
    (each column sums the same rows in the same order). dx may be dout or
    x: a stripe reads only its own columns, all of them before it writes
    any. Only the parallel twin is called, as for ``_batchnorm_train_stripes``."""
    n_rows, n_features = x.shape
    scale = _scales(gamma, var, eps) if relu_like is not None else np.empty(0)
    part_dout = np.empty((n_parts, n_features))
    part_dout_xmu = np.empty((n_parts, n_features))
    part_sums = np.empty((n_parts if dx_column_sums.size > 0 else 0, n_features))
    sums = np.empty((2, n_features))
    gain = np.empty(n_features)
    offset = np.empty(n_features)
    slope = np.empty(n_features)
    for stripe in prange(n_stripes):
        first, last = part_bounds(n_features, n_stripes, stripe)
        for part in range(n_parts):
            start, stop = part_bounds(n_rows, n_parts, part)
            _part_gradient_sums(part_dout[part, first:last], part_dout_xmu[part, first:last], dout, x, mean, scale,
                                beta, relu_like, start, stop, first, last)
        sum_parts(part_dout, sums[0], first, last)
        sum_parts(part_dout_xmu, sums[1], first, last)
        _gradient_coefficients(sums, var, gamma, eps, n_rows, dgamma, dbeta, gain, offset, slope, first, last)
        for part in range(n_parts - 1, -1, -1):  # last read, first written (each part sums its own dx)
            start, stop = part_bounds(n_rows, n_parts, part)
            _write_dx_part(dout, x, mean, scale, beta, relu_like, gain, offset, slope, dx, part_sums, part, start,
                           stop, first, last)
        if part_sums.shape[0] > 0:
            sum_parts(part_sums, dx_column_sums, first, last)


_batchnorm_backward_serial = _batchnorm_backward.serial


@cached_njit(error_model="numpy")
def batchnorm_gradients_plain(dout, x, mean, var, gamma, beta, eps, n_total, relu_like, dx, dgamma, dbeta,
                              dx_column_sums):
    """``_batchnorm_backward``'s serial twin for one process's C-contiguous
    dout and x: 13 arguments instead of 17 (see ``batchnorm_relu_train_plain``)."""
    sums = np.empty((2, x.shape[1]))
    _batchnorm_backward_serial(dout, x, mean, var, gamma, beta, eps, relu_like, n_total, sums, True, True,
                               n_row_parts(x.shape[0]), 1, dx, dgamma, dbeta, dx_column_sums, False)


@cached_njit(error_model="numpy")
def batchnorm_backward_plain(dout, x, mean, var, gamma, beta, eps, n_total, dx, dgamma, dbeta):
    """``batchnorm_gradients_plain`` without the ReLU and the column sums: 11
    arguments (it calls the twin itself, as ``batchnorm_train_plain`` does)."""
    sums = np.empty((2, x.shape[1]))
    _batchnorm_backward_serial(dout, x, mean, var, gamma, beta, eps, None, n_total, sums, True, True,
                               n_row_parts(x.shape[0]), 1, dx, dgamma, dbeta, np.empty(0), False)
