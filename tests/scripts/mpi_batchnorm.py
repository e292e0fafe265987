"""Synchronised batch norm under MPI: run as

    mpiexec -n 3 python -m mpi4py tests/scripts/mpi_batchnorm.py

Every rank builds the same global batch from one seed, keeps its own rows
(uneven shards, some empty), and checks that the synchronised layers give
the single-process results on the concatenated batch. Prints one
"rank R: all checks passed" line per rank, and the bytes communicated per
step against the activation size; any failure raises (``-m mpi4py`` then
aborts every rank, so nothing hangs).
"""

from __future__ import annotations

import pickle

import numpy as np
from mpi4py import MPI

import fastlayers as fl

comm = MPI.COMM_WORLD
rank, size = comm.Get_rank(), comm.Get_size()


def normwise(actual, expected):
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    scale = np.max(np.abs(expected)) if expected.size else 0.0
    diff = np.max(np.abs(actual - expected)) if expected.size else 0.0
    return diff / scale if scale > 0 else diff


def shard_bounds(counts):
    stops = np.cumsum(counts)
    return [(int(stop - count), int(stop)) for count, stop in zip(counts, stops)]


def shards(n_total, pattern):
    """Uneven row counts per rank summing to n_total; ``pattern`` 'empty' leaves rank 1 (or 0) with none."""
    weights = np.arange(1, size + 1, dtype=float)
    if pattern == "empty":
        weights[min(1, size - 1)] = 0
    counts = np.floor(n_total * weights / weights.sum()).astype(int)
    counts[np.argmax(weights)] += n_total - counts.sum()
    return counts


def gather_rows(local):
    return np.concatenate(comm.allgather(local), axis=0)


def check_batchnorm(dtype, n_total, d, pattern, tolerance):
    rng = np.random.default_rng(1234)  # the same global batch on every rank
    x = (rng.standard_normal((n_total, d)) * 3 + 5).astype(dtype)
    dout = rng.standard_normal((n_total, d)).astype(dtype)
    gamma, beta = rng.standard_normal(d).astype(dtype), rng.standard_normal(d).astype(dtype)
    start, stop = shard_bounds(shards(n_total, pattern))[rank]

    single = {"mode": "train", "momentum": 0.7}
    synced = {"mode": "train", "momentum": 0.7}
    for _ in range(3):  # running statistics over several steps
        out, cache = fl.batchnorm_forward(x, gamma, beta, single)
        dx, dgamma, dbeta = fl.batchnorm_backward(dout, cache)
        out_r, cache_r = fl.batchnorm_forward(x[start:stop], gamma, beta, synced, comm=comm)
        dx_r, dgamma_r, dbeta_r = fl.batchnorm_backward(dout[start:stop], cache_r)
        assert out_r.shape == (stop - start, d) and dx_r.shape == (stop - start, d)
        assert normwise(gather_rows(out_r), out) <= tolerance
        assert normwise(gather_rows(dx_r), dx) <= tolerance
        assert normwise(dgamma_r, dgamma) <= tolerance and normwise(dbeta_r, dbeta) <= tolerance
        for key in ("running_mean", "running_var"):
            assert normwise(synced[key], single[key]) <= tolerance, key
            assert synced[key].dtype == single[key].dtype
    # Every rank holds the very same running statistics and parameter gradients.
    for value in (synced["running_mean"], synced["running_var"], dgamma_r, dbeta_r):
        assert len({v.tobytes() for v in comm.allgather(value)}) == 1
    # Test mode communicates nothing and normalises each shard alone.
    out_test, none = fl.batchnorm_forward(x[start:stop], gamma, beta, dict(synced, mode="test"), comm=comm)
    expected, _ = fl.batchnorm_forward(x, gamma, beta, dict(synced, mode="test"))
    assert none is None and normwise(gather_rows(out_test), expected) <= tolerance


def check_sandwich(n_total, pattern):
    rng = np.random.default_rng(99)
    x = rng.standard_normal((n_total, 12))
    w = rng.standard_normal((12, 9))
    b, gamma, beta = rng.standard_normal(9), rng.standard_normal(9), rng.standard_normal(9)
    dout = rng.standard_normal((n_total, 9))
    start, stop = shard_bounds(shards(n_total, pattern))[rank]
    out, cache = fl.affine_batchnorm_relu_forward(x, w, b, gamma, beta, {"mode": "train"})
    dx, dw, db, dgamma, dbeta = fl.affine_batchnorm_relu_backward(dout, cache)
    out_r, cache_r = fl.affine_batchnorm_relu_forward(x[start:stop], w, b, gamma, beta, {"mode": "train"}, comm=comm)
    dx_r, dw_r, db_r, dgamma_r, dbeta_r = fl.affine_batchnorm_relu_backward(dout[start:stop], cache_r)
    assert normwise(gather_rows(out_r), out) <= 1e-12
    assert normwise(gather_rows(dx_r), dx) <= 1e-12
    assert normwise(dgamma_r, dgamma) <= 1e-12 and normwise(dbeta_r, dbeta) <= 1e-12
    # The affine weights' gradients are per rank: their sum over ranks is the global one.
    assert normwise(comm.allreduce(dw_r), dw) <= 1e-12
    assert np.max(np.abs(comm.allreduce(db_r) - db)) <= 1e-12 * np.max(np.abs(dx)) * n_total


def expect_value_error(match, call):
    try:
        call()
    except ValueError as error:
        assert match in str(error), str(error)
    else:
        raise AssertionError(f"no ValueError ({match})")


def check_errors():
    gamma = np.ones(6)
    d = 5 if rank == 0 else 6
    expect_value_error("disagree", lambda: fl.batchnorm_forward(
        np.ones((4, d)), np.ones(d), np.zeros(d), {"mode": "train"}, comm=comm))
    dtype = np.float32 if rank == size - 1 else np.float64
    expect_value_error("disagree", lambda: fl.batchnorm_forward(
        np.ones((4, 6), dtype), gamma, gamma, {"mode": "train"}, comm=comm))
    expect_value_error("global batch is empty", lambda: fl.batchnorm_forward(
        np.ones((0, 6)), gamma, gamma, {"mode": "train"}, comm=comm))
    try:
        fl.batchnorm_forward(np.ones((3, 6)), gamma, gamma, {"mode": "train"}, comm=object())
    except TypeError as error:
        assert "comm must be an MPI communicator" in str(error)
    else:
        raise AssertionError("no TypeError for a bad comm")


class CountingComm:
    """A communicator that counts the bytes each rank sends and receives."""

    def __init__(self, inner):
        self.inner, self.sent, self.received = inner, 0, 0

    def Get_rank(self):
        return self.inner.Get_rank()

    def Get_size(self):
        return self.inner.Get_size()

    def allgather(self, obj):
        result = self.inner.allgather(obj)
        self.sent += len(pickle.dumps(obj))
        self.received += sum(len(pickle.dumps(item)) for item in result)
        return result

    def Allgather(self, send, receive):
        self.inner.Allgather(send, receive)
        self.sent += send.nbytes
        self.received += receive.nbytes


def report_bytes(n_per_rank, d):
    x = np.random.default_rng(rank).standard_normal((n_per_rank, d))
    counting = CountingComm(comm)
    _, cache = fl.batchnorm_forward(x, np.ones(d), np.zeros(d), {"mode": "train"}, comm=counting)
    forward = (counting.sent, counting.received)
    fl.batchnorm_backward(x, cache)
    backward = (counting.sent - forward[0], counting.received - forward[1])
    if rank == 0:
        print(f"bytes per step, {size} ranks, x ({n_per_rank}, {d}) float64 per rank = {x.nbytes} bytes: "
              f"forward sent {forward[0]} received {forward[1]}, backward sent {backward[0]} "
              f"received {backward[1]} ({(sum(forward) + sum(backward)) / x.nbytes:.4%} of the activation)",
              flush=True)


for dtype, tolerance in ((np.float64, 1e-12), (np.float32, 1e-5)):
    for n_total, d, pattern in ((101, 7, "uneven"), (64, 600, "empty"), (size, 3, "uneven")):
        check_batchnorm(dtype, n_total, d, pattern, tolerance)
check_sandwich(57, "uneven")
check_sandwich(40, "empty")
check_errors()
report_bytes(1024, 4096)
print(f"rank {rank}: all checks passed", flush=True)
