"""``python -m fastlayers scaling``: the memory-bound kernels over thread counts.

For each thread count it sets fastlayers' threads (numba's and the BLAS's)
and measures, in this order: the copy bandwidth and first-touch cost at that
count (as ``bench`` does), then ReLU and batch norm forward and backward and
the batch-norm training step, fastlayers alternating with nothing else, then
PyTorch CPU (when importable) at the same thread count in a block of its own.
Each figure is the median of repeats, each timed call right after an untimed
call of itself, so compile time stays out (it is paid in the first,
untimed, call). "% of floor" uses that thread count's own copy bandwidth;
"% of ceiling" uses the highest copy bandwidth seen at any thread count,
the machine's copy ceiling.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from typing import Any

import numba
import numpy as np

from . import __version__, get_num_threads, set_num_threads, threading_layer
from ._table import BY_NAME, SIZES
from .bench import (DTYPES, TORCH_SPIN_S, _alternate, _cpu_model, _fmt_time, _torch_calls, aligned, floor_seconds,
                    measure_ceilings, progress, torch_wanted, write_json)

FUNCTIONS = ("relu_forward", "relu_backward", "batchnorm_forward", "batchnorm_backward", "batchnorm_step")


def default_thread_counts() -> list[int]:
    """1, 2, 4, ... up to NUMBA_NUM_THREADS, which is always included."""
    most = numba.config.NUMBA_NUM_THREADS
    counts = [1 << k for k in range(most.bit_length()) if 1 << k < most]
    return counts + [most]


def _bound(function: Callable[..., Any], args: tuple) -> Callable[[], Any]:
    return lambda: function(*args)


def measure(threads: list[int], shape: tuple[int, int], dtypes: list[str], repeats: int, budget: float,
            with_torch: bool, report: Callable[[str], None] = lambda message: None) -> list[dict[str, Any]]:
    """One record per (dtype, thread count, function), plus one ceiling record per (dtype, thread count).

    ``report`` is told what is being measured. The thread settings
    (fastlayers' and, with ``with_torch``, PyTorch's) are restored afterwards.
    """
    torch = None
    if with_torch:
        import torch
    threads_before = get_num_threads()
    torch_threads_before = torch.get_num_threads() if torch is not None else 0
    layers = {name: BY_NAME[name] for name in FUNCTIONS}
    rng = np.random.default_rng(0)
    records: list[dict[str, Any]] = []
    try:
        for dtype in dtypes:
            inputs = {name: layer.inputs(rng, shape, dtype) for name, layer in layers.items()}
            calls = {name: _bound(layer.function("fastlayers"), layer.call_args("fastlayers", inputs[name]))
                     for name, layer in layers.items()}
            torch_calls: dict[str, Callable[[], Any]] = {}
            if torch is not None:  # once per dtype, not per thread count: a backward's first call clones the inputs
                for name, layer in layers.items():
                    call = _torch_calls(layer, inputs[name])
                    if call is not None:
                        torch_calls[name] = call
            for n in threads:
                set_num_threads(n)
                report(f"{dtype}, {n} threads: copy bandwidth")
                bandwidth, touch = measure_ceilings(shape, dtype, repeats)
                records.append({"kind": "ceiling", "dtype": dtype, "threads": n, "copy_bandwidth_gbs": bandwidth,
                                "first_touch_s": touch})
                report(f"{dtype}, {n} threads: fastlayers")
                with np.errstate(all="ignore"):
                    times = _alternate(calls, repeats, budget)
                torch_times: dict[str, float] = {}
                if torch is not None:
                    report(f"{dtype}, {n} threads: torch")
                    torch.set_num_threads(n)
                    torch_times = _alternate(torch_calls, repeats, budget)
                    time.sleep(TORCH_SPIN_S)  # let PyTorch's spinning OpenMP threads go idle
                for name in FUNCTIONS:
                    records.append({"kind": "kernel", "function": name, "dtype": dtype, "threads": n,
                                    "fastlayers_s": times[name], "torch_s": torch_times.get(name),
                                    "floor_s": floor_seconds(name, shape, dtype, bandwidth, touch)})
    finally:
        set_num_threads(threads_before)
        if torch is not None:
            torch.set_num_threads(torch_threads_before)
    return records


def format_table(records: list[dict[str, Any]], shape: tuple[int, ...]) -> str:
    """One line per (function, dtype, thread count), from ``measure``'s records for arrays of ``shape``."""
    ceilings = {(r["dtype"], r["threads"]): r for r in records if r["kind"] == "ceiling"}
    best = {dtype: max(r["copy_bandwidth_gbs"] for (d, _), r in ceilings.items() if d == dtype)
            for dtype, _ in ceilings}
    kernels = [r for r in records if r["kind"] == "kernel"]
    fewest = min(r["threads"] for r in kernels)
    baseline = {(r["function"], r["dtype"]): r["fastlayers_s"] for r in kernels if r["threads"] == fewest}
    header = ["function", "dtype", "threads", "fastlayers", "speed-up", "% of floor", "% of ceiling",
              "copy GB/s", "torch", "vs torch"]
    lines = [header]
    for r in sorted(kernels, key=lambda r: (FUNCTIONS.index(r["function"]), r["dtype"], r["threads"])):
        ceiling = ceilings[(r["dtype"], r["threads"])]
        at_ceiling = floor_seconds(r["function"], shape, r["dtype"], best[r["dtype"]], ceiling["first_touch_s"])
        lines.append([
            r["function"], r["dtype"], str(r["threads"]), _fmt_time(r["fastlayers_s"]),
            f"{baseline[(r['function'], r['dtype'])] / r['fastlayers_s']:.2f}x",
            f"{100 * r['floor_s'] / r['fastlayers_s']:.0f}%", f"{100 * at_ceiling / r['fastlayers_s']:.0f}%",
            f"{ceiling['copy_bandwidth_gbs']:.1f}", _fmt_time(r["torch_s"]),
            f"{r['torch_s'] / r['fastlayers_s']:.2f}x" if r["torch_s"] else "-",
        ])
    return aligned(lines)


def run(args: Any) -> int:
    most = numba.config.NUMBA_NUM_THREADS
    threads = args.threads or default_thread_counts()
    if max(threads) > most:
        print(f"--threads: at most NUMBA_NUM_THREADS={most} threads, got {max(threads)}", file=sys.stderr)
        return 2
    dtypes = list(DTYPES) if args.dtype == "all" else [args.dtype]
    started = time.perf_counter()
    n, d = args.shape or SIZES[args.size]["nd"]
    records = measure(sorted(set(threads)), (n, d), dtypes, args.repeat, 3.0, torch_wanted(args.no_torch), progress)
    progress("")
    print(file=sys.stderr)
    print(f"fastlayers {__version__} scaling: numpy {np.__version__}, numba {numba.__version__}, "
          f"threading layer {threading_layer()}, {os.cpu_count()} cores ({_cpu_model()}), size {n}x{d}")
    print(f"medians of up to {args.repeat} repeats, each right after an untimed call of itself; "
          "speed-up against the fewest threads; % of floor = (bytes / copy bandwidth at this thread count "
          "+ first touch of fresh outputs) / time; % of ceiling: the same at the best copy bandwidth of any "
          "thread count\n")
    print(format_table(records, (n, d)))
    print(f"\nmeasured in {time.perf_counter() - started:.0f} s")
    if args.json:
        write_json(args.json, {"size": [n, d], "records": records})
    return 0
