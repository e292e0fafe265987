"""Batch-norm kernels over C-contiguous (N, D) arrays.

Statistics are accumulated in float64 whatever the input dtype, over a fixed
partition of the rows into parts (``n_row_parts``): each part streams its
rows in cache-sized blocks, takes the block's mean and sum of squared
deviations in two passes while the block is hot, and merges blocks with
Chan's formula; parts are then merged in part order. Nothing depends on
the thread count, so the serial and the parallel twin agree bitwise.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import prange, types
from numba.extending import overload

from ._twins import column_chunk, n_column_chunks, part_bounds, sum_parts, twin

# Row-blocked passes over (N, D): the statistics kernel has two parallel
# regions and per-part buffers, so its parallel twin wins later than an
# elementwise pass. Measured (float64, D = 256, 2 cores, tbb, median of 41;
# serial/parallel us): 65536: 37.1/40.4, 131072: 72.0/62.8.
BATCHNORM_THRESHOLD = 1 << 17

# Rows per statistics block: about 512 KiB of x, so a block stays in L2
# between its two passes. Measured (_batchnorm_stats, 2 parts, 2 cores,
# 256x4096 float64, ms): 128 KiB blocks 0.395, 512 KiB 0.348, 1 MiB 0.357.
_BLOCK_BYTES = 1 << 19


def block_rows(n_features: int, itemsize: int) -> int:
    return max(1, _BLOCK_BYTES // (itemsize * max(1, n_features)))


@numba.njit(inline="always")
def _chan_merge(count, n_new, mean, m2, new_mean, new_m2, start, stop):
    """Merge (n_new, new_mean, new_m2) into (count, mean, m2) over columns
    [start, stop) with Chan et al.'s formula; return the merged count."""
    total = count + n_new
    weight = n_new / total
    cross = count * weight
    for j in range(start, stop):
        delta = new_mean[j] - mean[j]
        mean[j] += delta * weight
        m2[j] += new_m2[j] + delta * delta * cross
    return total


@twin(BATCHNORM_THRESHOLD)
def _batchnorm_stats(x, n_parts, rows_per_block, mean, var, momentum, running_mean, running_var,
                     new_running_mean, new_running_var):
    """mean[j], var[j] (biased) of x[:, j], two-pass quality, float64; and the
    running statistics' update ``momentum * running + (1 - momentum) * sample``
    into the new arrays, in the dtypes NumPy would use for it (momentum in
    the running array's dtype, the sample in x's)."""
    n_rows, n_features = x.shape
    part_mean = np.zeros((n_parts, n_features))
    part_m2 = np.zeros((n_parts, n_features))
    for part in prange(n_parts):
        start, stop = part_bounds(n_rows, n_parts, part)
        block_mean = np.empty(n_features)
        block_m2 = np.empty(n_features)
        count = 0
        for block_start in range(start, stop, rows_per_block):
            block_stop = min(block_start + rows_per_block, stop)
            n_block = block_stop - block_start
            block_mean[:] = 0.0
            for i in range(block_start, block_stop):
                for j in range(n_features):
                    block_mean[j] += x[i, j]
            for j in range(n_features):
                block_mean[j] /= n_block
            block_m2[:] = 0.0
            for i in range(block_start, block_stop):
                for j in range(n_features):
                    deviation = x[i, j] - block_mean[j]
                    block_m2[j] += deviation * deviation
            count = _chan_merge(count, n_block, part_mean[part], part_m2[part], block_mean, block_m2,
                                0, n_features)
    for chunk in prange(n_column_chunks(n_features)):
        start, stop = column_chunk(n_features, chunk)
        mean[start:stop] = 0.0
        var[start:stop] = 0.0
        count = 0
        for part in range(n_parts):
            part_start, part_stop = part_bounds(n_rows, n_parts, part)
            if part_stop > part_start:
                count = _chan_merge(count, part_stop - part_start, mean, var, part_mean[part], part_m2[part],
                                    start, stop)
        for j in range(start, stop):
            var[j] /= n_rows
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


@numba.njit(cache=True, error_model="numpy")
def update_running(momentum, running_mean, running_var, mean, var, sample_like, new_running_mean, new_running_var):
    """``_update_running`` on its own, for statistics merged outside the kernel."""
    _update_running(momentum, running_mean, running_var, mean, var, sample_like, new_running_mean, new_running_var)


@numba.njit(cache=True, error_model="numpy")
def merge_rank_statistics(counts, means, m2s, mean, m2):
    """Merge per-rank (count, mean, M2) rows, in rank order, into mean and m2
    with Chan et al.'s formula (the parts' merge of ``_batchnorm_stats``);
    ranks without rows are skipped. Returns the total count."""
    mean[:] = 0.0
    m2[:] = 0.0
    count = 0
    for rank in range(counts.size):
        if counts[rank] > 0:
            count = _chan_merge(count, counts[rank], mean, m2, means[rank], m2s[rank], 0, mean.size)
    return count


@numba.njit(inline="always")
def _scales(gamma, var, eps):
    """gamma / sqrt(var + eps) per feature, float64: the normalise pass's
    multiplier, computed one way everywhere so recomputed outputs match."""
    scale = np.empty(var.size)
    for j in range(var.size):
        scale[j] = gamma[j] * (1.0 / np.sqrt(var[j] + eps))
    return scale


@numba.njit(inline="always")
def _normalized(x_value, center, scale, shift, out_like):
    """One output element, rounded to the output's dtype (``out_like``'s)."""
    return out_like.dtype.type((x_value - center) * scale + shift)


@twin(BATCHNORM_THRESHOLD)
def _batchnorm_normalize(x, center, var, gamma, beta, eps, relu, out):
    """out[i, j] = (x[i, j] - center[j]) * gamma[j] / sqrt(var[j] + eps) + beta[j],
    followed by a ReLU (NaN and -0.0 pass, as in relu_forward) when ``relu``.

    The per-feature scale is computed here (O(D), float64) so that the
    Python layer makes no NumPy calls of its own for it.
    """
    n_rows, n_features = x.shape
    scale = _scales(gamma, var, eps)
    zero = out.dtype.type(0)
    if relu:
        for i in prange(n_rows):
            for j in range(n_features):
                value = _normalized(x[i, j], center[j], scale[j], beta[j], out)
                out[i, j] = zero if value < zero else value
    else:
        for i in prange(n_rows):
            for j in range(n_features):
                out[i, j] = _normalized(x[i, j], center[j], scale[j], beta[j], out)


def gradient_through_relu(gradient, x_value, center, scale, beta, j, relu_like):
    """dout (float64) through the ReLU that followed the normalise, if any.

    ``relu_like`` is None (no ReLU: the gradient as it is) or an empty array
    of the forward output's dtype: the ReLU's input is then recomputed as
    the forward computed it, so the mask has the forward's own bits. The
    overload below is the implementation; it chooses when numba types the
    call, so the plain kernel carries no per-element test. Kernels only.
    """
    raise NotImplementedError("gradient_through_relu() is called from numba kernels only")


@overload(gradient_through_relu)
def _gradient_through_relu_overload(gradient, x_value, center, scale, beta, j, relu_like):
    if isinstance(relu_like, types.NoneType):
        return lambda gradient, x_value, center, scale, beta, j, relu_like: gradient

    def through(gradient, x_value, center, scale, beta, j, relu_like):
        normalized = _normalized(x_value, center, scale[j], beta[j], relu_like)
        return gradient * (1.0 if normalized >= 0 else 0.0)

    return through


@twin(BATCHNORM_THRESHOLD)
def _batchnorm_backward(dout, x, mean, var, gamma, beta, eps, relu_like, n_total, sums, reduce, apply, n_parts,
                        dx, dgamma, dbeta, dx_column_sums):
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
    """
    n_rows, n_features = x.shape
    scale = _scales(gamma, var, eps) if relu_like is not None else np.empty(0)
    if reduce:
        part_dout = np.zeros((n_parts, n_features))
        part_dout_xmu = np.zeros((n_parts, n_features))
        for part in prange(n_parts):
            start, stop = part_bounds(n_rows, n_parts, part)
            p_dout = part_dout[part]
            p_dout_xmu = part_dout_xmu[part]
            for i in range(start, stop):
                for j in range(n_features):
                    gradient = gradient_through_relu(np.float64(dout[i, j]), x[i, j], mean[j], scale, beta, j,
                                                     relu_like)
                    p_dout[j] += gradient
                    p_dout_xmu[j] += gradient * (x[i, j] - mean[j])
        for chunk in prange(n_column_chunks(n_features)):
            start, stop = column_chunk(n_features, chunk)
            sums[0, start:stop] = sum_parts(part_dout, start, stop)
            sums[1, start:stop] = sum_parts(part_dout_xmu, start, stop)
    if not apply:
        return
    gain = np.empty(n_features)
    offset = np.empty(n_features)
    slope = np.empty(n_features)
    for j in range(n_features):
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
    summing = dx_column_sums.size > 0
    part_sums = np.zeros((n_parts if summing else 0, n_features))
    for part in prange(n_parts):
        start, stop = part_bounds(n_rows, n_parts, part)
        for i in range(start, stop):
            for j in range(n_features):
                gradient = gradient_through_relu(np.float64(dout[i, j]), x[i, j], mean[j], scale, beta, j, relu_like)
                dx[i, j] = gain[j] * (gradient - offset[j] - (x[i, j] - mean[j]) * slope[j])
            if summing:
                p_sums = part_sums[part]
                for j in range(n_features):
                    p_sums[j] += dx[i, j]
    if summing:
        for chunk in prange(n_column_chunks(n_features)):
            start, stop = column_chunk(n_features, chunk)
            dx_column_sums[start:stop] = sum_parts(part_sums, start, stop)
