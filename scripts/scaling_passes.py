"""Each pass of the batch-norm and ReLU kernels, alone, over thread counts.

A diagnostic for a machine with many cores (BENCHMARKS.md, session 12):
where do the large kernels lose against the copy when their data sits in a
large L3? It times, at each thread count and into preallocated outputs:

- the copy (``bench._parallel_copy`` into a reused array) and a parallel
  loop that does nothing but launch (16 iterations);
- the ReLU forward and backward kernels (parallel twins, flat views);
- the batch-norm statistics, normalise, backward reductions and dx pass
  (parallel twins, the reductions over the shape's row parts, 16 from
  512 rows on, and over 64 parts for comparison);
- the same statistics and reductions with each row part split further by
  columns into tasks (``SPLITS`` per part: the package's kernels given that
  split count, where the package splits a single part only). Each column
  is still summed over the same rows in the same order, so the bits are
  those of whole rows (checked here before timing); only the number of
  tasks that the threads share changes;
- some of these with numba's parallel chunk size set (``_chunk<size>``):
  the kernels are called directly, not through the twins' dispatch, which
  runs them at numba's default chunk size whatever the caller set;
- the public functions over the same arrays (``api_``), with fresh
  outputs and into preallocated ones (at one thread they take the serial
  twins, the kernel cases the parallel ones).

Each figure: median and best of ``--repeat`` rounds; within a round the
cases alternate, each timed call right after an untimed call of itself.
The first call of each case compiles it, outside every figure.

    PYTHONPATH=src python scripts/scaling_passes.py --json F [--threads 1 2 4 8 16]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import numba
import numpy as np
from numba import prange

import fastlayers
from fastlayers import set_num_threads, threading_layer
from fastlayers._kernels._twins import n_column_splits, n_row_parts
from fastlayers._kernels.batchnorm import (
    _batchnorm_backward,
    _batchnorm_normalize,
    _batchnorm_stats,
)
from fastlayers._kernels.relu import _relu_backward, _relu_forward
from fastlayers.bench import _cpu_model, _parallel_copy

SPLITS = (2, 4, 8)


@numba.njit(parallel=True)
def launch_only(out):
    for i in prange(out.size):
        out[i] = i


def _cases(x, dout, parts):
    """name -> call, and the arrays each family's results are checked on."""
    n, d = x.shape
    splits = n_column_splits(parts, d)  # the package's tasks
    mean, var = np.empty(d), np.empty(d)
    _batchnorm_stats.parallel(x, parts, splits, mean, var, 0.9, np.zeros(d), np.ones(d), np.empty(0), np.empty(0))
    gamma = np.ones(d, x.dtype)
    beta = np.zeros(d, x.dtype)
    sums = np.empty((2, d))
    out, dx, reused = np.empty_like(x), np.empty_like(x), np.empty_like(x)
    flat_x, flat_dout, flat_out, flat_dx = x.reshape(-1), dout.reshape(-1), out.reshape(-1), dx.reshape(-1)
    no_mask = np.empty(0, np.bool_)
    dgamma, dbeta, no_sums = np.empty(d, x.dtype), np.empty(d, x.dtype), np.empty(0)
    s_mean, s_var, s_sums = np.empty(d), np.empty(d), np.empty((2, d))

    def backward(sums_, reduce, apply, n_parts, n_splits=None):
        n_splits = n_column_splits(n_parts, d) if n_splits is None else n_splits
        return lambda: _batchnorm_backward.parallel(dout, x, mean, var, gamma, beta, 1e-5, None, n, sums_, reduce,
                                                    apply, n_parts, n_splits, dx, dgamma, dbeta, no_sums, False)

    launch_out = np.empty(16)
    calls = {
        "copy": lambda: _parallel_copy(flat_x, reused.reshape(-1)),
        "launch": lambda: launch_only(launch_out),
        "relu_forward": lambda: _relu_forward.parallel(flat_x, flat_out, no_mask, False),
        "relu_backward": lambda: _relu_backward.parallel(flat_dout, flat_x, flat_dx, False),
        "stats": lambda: _batchnorm_stats.parallel(x, parts, splits, s_mean, s_var, 0.9, np.zeros(d), np.ones(d),
                                                   np.empty(0), np.empty(0)),
        "stats_64parts": lambda: _batchnorm_stats.parallel(x, 64, 1, s_mean, s_var, 0.9, np.zeros(d), np.ones(d),
                                                           np.empty(0), np.empty(0)),
        "normalize": lambda: _batchnorm_normalize.parallel(x, mean, var, gamma, beta, 1e-5, None, out, False),
        "reduce": backward(s_sums, True, False, parts),
        "reduce_64parts": backward(s_sums, True, False, 64),
        "dx": backward(sums, False, True, parts),
        "dx_64parts": backward(sums, False, True, 64),
    }
    backward(sums, True, False, parts)()  # the reductions the dx cases apply
    for k in SPLITS:  # the package's kernels with every part split into k column ranges
        calls[f"stats_split{k}"] = lambda k=k: _batchnorm_stats.parallel(x, parts, k, s_mean, s_var, 0.9, np.zeros(d),
                                                                         np.ones(d), np.empty(0), np.empty(0))
        calls[f"reduce_split{k}"] = backward(s_sums, True, False, parts, k)
    # The same calls with numba's chunk size set (iterations per chunk that
    # a thread takes; 0, the default, divides the loop into one chunk per
    # thread): more, smaller chunks for the threading layer to balance.
    chunked = {"copy": 1 << 16, "relu_forward": 1 << 16, "relu_backward": 1 << 16, "normalize": 8,
               "dx_64parts": 1, "stats_split4": 1, "reduce_split4": 1, "dx": 1, "stats": 1,
               "reduce": 1}
    for name, size in chunked.items():
        calls[f"{name}_chunk{size}"] = _with_chunksize(calls[name], size)
    # The public functions over the same arrays: fresh outputs, and into
    # preallocated ones (``_out``), to set beside the passes they run.
    _, cache = fastlayers.batchnorm_forward(x, gamma, beta, {"mode": "train"})
    api_out, api_dx = np.empty_like(x), np.empty_like(x)
    api_dgamma, api_dbeta = np.empty(d, x.dtype), np.empty(d, x.dtype)
    calls.update({
        "api_relu_forward": lambda: fastlayers.relu_forward(x),
        "api_relu_forward_out": lambda: fastlayers.relu_forward(x, out=api_out),
        "api_bn_forward": lambda: fastlayers.batchnorm_forward(x, gamma, beta, {"mode": "train"}),
        "api_bn_forward_out": lambda: fastlayers.batchnorm_forward(x, gamma, beta, {"mode": "train"}, out=api_out),
        "api_bn_backward": lambda: fastlayers.batchnorm_backward(dout, cache),
        "api_bn_backward_out": lambda: fastlayers.batchnorm_backward(dout, cache, dx=api_dx, dgamma=api_dgamma,
                                                                     dbeta=api_dbeta),
    })
    checks = {"stats": (mean, var, (s_mean, s_var)), "reduce": (sums, None, (s_sums,))}
    return calls, checks


def _with_chunksize(call, size):
    def chunked():
        with numba.parallel_chunksize(size):
            return call()

    return chunked


def check_splits(calls, checks):
    """Each split variant must give the package kernel's bits."""
    for family, (a, b, scratch) in checks.items():
        for k in SPLITS:
            calls[f"{family}_split{k}"]()
            same = np.array_equal(scratch[0], a) and (b is None or np.array_equal(scratch[1], b))
            if not same:
                raise SystemExit(f"{family}_split{k} differs from the package kernel")


def time_round_robin(calls, repeats, budget):
    samples = {name: [] for name in calls}
    started = time.perf_counter()
    for round_ in range(repeats):
        for name, call in calls.items():
            call()
            t0 = time.perf_counter()
            call()
            samples[name].append(time.perf_counter() - t0)
        if round_ >= 2 and time.perf_counter() - started > budget:
            break
    return {name: (statistics.median(t), min(t), len(t)) for name, t in samples.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, nargs=2, default=(4096, 4096))
    parser.add_argument("--threads", type=int, nargs="+")
    parser.add_argument("--dtype", nargs="+", default=["float32", "float64"])
    parser.add_argument("--repeat", type=int, default=11)
    parser.add_argument("--budget", type=float, default=4.0, help="seconds per (dtype, thread count), at least 3 rounds")
    parser.add_argument("--json")
    args = parser.parse_args()
    most = numba.config.NUMBA_NUM_THREADS
    threads = args.threads or sorted({1 << k for k in range(most.bit_length()) if 1 << k <= most} | {most})
    n, d = args.shape
    parts = n_row_parts(n)
    print(f"numpy {np.__version__}, numba {numba.__version__}, layer {threading_layer()}, {os.cpu_count()} cores "
          f"({_cpu_model()}), shape {n}x{d}, {parts} row parts, splits {SPLITS}", flush=True)
    rng = np.random.default_rng(0)
    records = []
    for dtype in args.dtype:
        x = rng.standard_normal((n, d)).astype(dtype) * 3 + 1
        dout = rng.standard_normal((n, d)).astype(dtype)
        calls, checks = _cases(x, dout, parts)
        started = time.perf_counter()
        for call in calls.values():  # compile (or load) every case
            call()
        check_splits(calls, checks)
        print(f"{dtype}: compiled and checked in {time.perf_counter() - started:.1f} s", flush=True)
        for t in threads:
            set_num_threads(t)
            for name, (median, best, rounds) in time_round_robin(calls, args.repeat, args.budget).items():
                records.append({"dtype": dtype, "threads": t, "case": name, "median_s": median, "best_s": best,
                                "rounds": rounds})
            copy = next(r for r in records if r["dtype"] == dtype and r["threads"] == t and r["case"] == "copy")
            print(f"{dtype} {t:2d} threads: copy {2 * x.nbytes / copy['median_s'] / 1e9:.1f} GB/s (median), "
                  f"{2 * x.nbytes / copy['best_s'] / 1e9:.1f} (best)", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"shape": [n, d], "parts": parts, "splits": SPLITS, "cpu": _cpu_model(),
                       "cores": os.cpu_count(), "numba": numba.__version__, "records": records}, f, indent=1)
    print_table(records, args.dtype, threads)
    return 0


def print_table(records, dtypes, threads):
    """One line per (dtype, case): median ms per thread count, then the median's multiple of the copy's."""
    by = {(r["dtype"], r["threads"], r["case"]): r for r in records}
    cases = list(dict.fromkeys(r["case"] for r in records))
    for dtype in dtypes:
        print(f"\n{dtype}: median ms at {threads} threads | time / copy time at the same count")
        for case in cases:
            times = [by[(dtype, t, case)]["median_s"] for t in threads]
            ratios = [by[(dtype, t, case)]["median_s"] / by[(dtype, t, "copy")]["median_s"] for t in threads]
            print(f"  {case:24s} " + " ".join(f"{1e3 * s:8.3f}" for s in times) + " | "
                  + " ".join(f"{q:5.2f}" for q in ratios))


if __name__ == "__main__":
    sys.exit(main())
