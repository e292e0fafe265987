"""Batch-norm kernels over C-contiguous (N, D) arrays.

Statistics are accumulated in float64 whatever the input dtype, over a fixed
partition of the rows into parts (``n_row_parts``): each part streams its
rows in cache-sized blocks, takes the block's mean and sum of squared
deviations in two passes while the block is hot, and merges blocks with
Chan's formula; parts are then merged in part order. Nothing depends on
the thread count, so the serial and the parallel twin agree bitwise.
"""

from __future__ import annotations

import numpy as np
from numba import prange

from ._twins import part_bounds, twin

# Row-blocked passes over (N, D): the statistics kernel has two parallel
# regions and per-part buffers, so its parallel twin wins later than an
# elementwise pass. Measured (float64, D = 256, 2 cores, tbb, median of 41;
# serial/parallel us): 65536: 37.1/40.4, 131072: 72.0/62.8.
BATCHNORM_THRESHOLD = 1 << 17

# Rows per statistics block: about 128 KiB of float64 so a block stays in L2
# between its two passes.
_BLOCK_BYTES = 1 << 17


def block_rows(n_features: int) -> int:
    return max(1, _BLOCK_BYTES // (8 * max(1, n_features)))


@twin(BATCHNORM_THRESHOLD)
def _batchnorm_stats(x, n_parts, rows_per_block, mean, var):
    """mean[j], var[j] (biased) of x[:, j], two-pass quality, float64."""
    n_rows, n_features = x.shape
    part_mean = np.zeros((n_parts, n_features))
    part_m2 = np.zeros((n_parts, n_features))
    for part in prange(n_parts):
        start, stop = part_bounds(n_rows, n_parts, part)
        p_mean = part_mean[part]
        p_m2 = part_m2[part]
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
            # Chan et al.: merge (count, p_mean, p_m2) with the block.
            total = count + n_block
            weight = n_block / total
            cross = count * weight
            for j in range(n_features):
                delta = block_mean[j] - p_mean[j]
                p_mean[j] += delta * weight
                p_m2[j] += block_m2[j] + delta * delta * cross
            count = total
    for j in prange(n_features):
        count = 0
        merged_mean = 0.0
        merged_m2 = 0.0
        for part in range(n_parts):
            start, stop = part_bounds(n_rows, n_parts, part)
            n_part = stop - start
            if n_part == 0:
                continue
            total = count + n_part
            delta = part_mean[part, j] - merged_mean
            merged_mean += delta * (n_part / total)
            merged_m2 += part_m2[part, j] + delta * delta * (count * n_part / total)
            count = total
        mean[j] = merged_mean
        var[j] = merged_m2 / n_rows


@twin(BATCHNORM_THRESHOLD)
def _batchnorm_normalize(x, center, var, gamma, beta, eps, out):
    """out[i, j] = (x[i, j] - center[j]) * gamma[j] / sqrt(var[j] + eps) + beta[j].

    The per-feature scale is computed here (O(D), float64) so that the
    Python layer makes no NumPy calls of its own for it.
    """
    n_rows, n_features = x.shape
    scale = np.empty(n_features)
    for j in range(n_features):
        scale[j] = gamma[j] * (1.0 / np.sqrt(var[j] + eps))
    for i in prange(n_rows):
        for j in range(n_features):
            out[i, j] = (x[i, j] - center[j]) * scale[j] + beta[j]


@twin(BATCHNORM_THRESHOLD)
def _batchnorm_backward(dout, x, mean, var, gamma, eps, n_parts, dx, dgamma, dbeta):
    """dx, dgamma, dbeta of the train-mode forward, in two passes over (N, D).

    First pass: sum_i dout and sum_i dout·(x - mean) per feature, over fixed
    row parts merged in part order. Then, per feature, the closed form's
    coefficients, and the second pass:
    dx = gamma·ivar · (dout - sum(dout)/N - (x - mean)·ivar²·sum(dout·(x - mean))/N).
    """
    n_rows, n_features = x.shape
    part_dout = np.zeros((n_parts, n_features))
    part_dout_xmu = np.zeros((n_parts, n_features))
    for part in prange(n_parts):
        start, stop = part_bounds(n_rows, n_parts, part)
        p_dout = part_dout[part]
        p_dout_xmu = part_dout_xmu[part]
        for i in range(start, stop):
            for j in range(n_features):
                gradient = np.float64(dout[i, j])
                p_dout[j] += gradient
                p_dout_xmu[j] += gradient * (x[i, j] - mean[j])
    gain = np.empty(n_features)
    offset = np.empty(n_features)
    slope = np.empty(n_features)
    for j in prange(n_features):
        total_dout = 0.0
        total_dout_xmu = 0.0
        for part in range(n_parts):
            total_dout += part_dout[part, j]
            total_dout_xmu += part_dout_xmu[part, j]
        ivar = 1.0 / np.sqrt(var[j] + eps)
        dbeta[j] = total_dout
        dgamma[j] = ivar * total_dout_xmu
        gain[j] = gamma[j] * ivar
        offset[j] = total_dout / n_rows
        slope[j] = ivar * ivar * total_dout_xmu / n_rows
        # A feature whose sums are not finite (Inf or NaN in dout) has no
        # defined gradient: NaN across it, as the seed's 10 steps give (their
        # dmu is Inf - Inf), not the closed form's mix of NaN and +-Inf.
        if not (np.isfinite(offset[j]) and np.isfinite(slope[j])):
            offset[j] = np.nan
    for i in prange(n_rows):
        for j in range(n_features):
            dx[i, j] = gain[j] * (dout[i, j] - offset[j] - (x[i, j] - mean[j]) * slope[j])
