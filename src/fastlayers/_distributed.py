"""Synchronised batch norm across MPI processes: the collective steps.

fastlayers never imports mpi4py: ``comm`` is any object with mpi4py's
communicator methods ``allgather`` (Python objects), ``Allgather`` (buffers),
``Get_rank`` and ``Get_size``, so the package imports and runs without MPI.

Why gathers, not reductions: each rank's statistics are the same (count,
mean, M2) partials that the single-process kernel merges across row parts,
and every rank merges all ranks' partials with Chan's formula in rank order.
That keeps two-pass accuracy (never E[x^2] - E[x]^2), takes one collective
instead of the two that "sum, then squared deviations about the global mean"
needs, and gives every rank the very same bits by construction (an
allreduce's rounding depends on the MPI library's algorithm). The bytes are
2D float64 per rank (and a small (rows, D, dtype) tuple), gathered to every
rank; the backward gathers 2D float64 per rank and sums them in rank order,
for the same reasons. With P ranks each receives 16·P·D bytes a pass, which
is small beside the activation (8·N·D bytes a rank in float64) as long as P
stays below the rows per rank; past that, two allreduces would move less.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ._kernels.batchnorm import merge_rank_statistics


def check_communicator(func: str, comm: Any) -> None:
    for method in ("allgather", "Allgather", "Get_rank", "Get_size"):
        if not callable(getattr(comm, method, None)):
            raise TypeError(f"{func}: comm must be an MPI communicator (mpi4py's MPI.Comm), "
                            f"got {type(comm).__name__}, which has no {method}()")


def global_rows(func: str, comm: Any, n_rows: int, n_features: int, dtype: np.dtype) -> np.ndarray:
    """Every rank's row count, after checking that all ranks agree on D and dtype.

    One small gather of (rows, D, dtype) that every rank checks alike, so a
    disagreement is a ValueError on every rank rather than a hang or a
    mismatched buffer exchange.
    """
    shapes = comm.allgather((int(n_rows), int(n_features), np.dtype(dtype).str))
    features = {entry[1] for entry in shapes}
    dtypes = {entry[2] for entry in shapes}
    if len(features) > 1 or len(dtypes) > 1:
        described = ", ".join(f"rank {rank}: D={d} {np.dtype(t).name}" for rank, (_, d, t) in enumerate(shapes))
        raise ValueError(f"{func}: the ranks of comm disagree on the number of features or the dtype of x "
                         f"({described}); every rank must pass x of shape (N_rank, D) with one D and one dtype")
    counts = np.array([entry[0] for entry in shapes], dtype=np.int64)
    if counts.sum() == 0:
        raise ValueError(f"{func}: the global batch is empty (every rank has N = 0); train mode needs N >= 1 "
                         "rows across the ranks for batch statistics")
    return counts


def merge_statistics(comm: Any, counts: np.ndarray, mean: np.ndarray, var: np.ndarray) -> None:
    """Replace this rank's (mean, biased var) by those of the global batch, in place."""
    n_features = mean.size
    rank = comm.Get_rank()
    local = np.concatenate([mean, var * counts[rank]])  # (mean, M2)
    gathered = np.empty((counts.size, 2 * n_features))
    comm.Allgather(local, gathered)
    n_total = merge_rank_statistics(counts, gathered[:, :n_features], gathered[:, n_features:], mean, var)
    var /= n_total


def sum_over_ranks(comm: Any, local: np.ndarray) -> np.ndarray:
    """The sum over every rank of the float64 array ``local``, added in rank order."""
    gathered = np.empty((comm.Get_size(), local.size))
    comm.Allgather(np.ascontiguousarray(local).reshape(-1), gathered)
    total = gathered[0].copy()
    for row in gathered[1:]:
        total += row
    return total.reshape(local.shape)


class SingleProcessComm:
    """A communicator of one rank (mpi4py's ``COMM_SELF``, without MPI):
    ``warmup`` compiles the synchronised path with it, and tests use it."""

    def Get_rank(self) -> int:
        return 0

    def Get_size(self) -> int:
        return 1

    def allgather(self, obj: Any) -> list[Any]:
        return [obj]

    def Allgather(self, send: np.ndarray, receive: np.ndarray) -> None:
        receive[0] = send
