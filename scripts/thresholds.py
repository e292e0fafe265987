"""Where each layer's parallel kernels start to beat their serial twins, on this machine.

Issue 4 asks for each serial/parallel threshold to be chosen from
measurement, with no parallel launch where it loses. This script times
each single layer's public function as a user calls it (inputs and
arguments from the table that drives the tests and the bench; fresh
outputs) with every kernel's threshold set above any size, so that it
runs its serial twin (through the short entries where a layer has them),
then set to 0, so that it runs its parallel twin, over a range of sizes,
and prints each pair beside the threshold of the layer's kernels. Sizes
are counted as the kernels' thresholds count them (``TwinKernel.unit``):
bytes of x (dout for the backward) for ReLU, elements of x for batch
norm, of the output for the affine layer.

- ReLU: D = 256 (the width does not matter to an elementwise pass);
- batch norm: D = 64, 256, 2048 and 4096 (a short batch of D >= 2048 runs
  in column stripes: "Column stripes" in _twins.py);
- the affine layer: D = 16, M = 1024, where the passes of its twins (the
  bias, db) weigh the most against the BLAS products.

Within a round the two paths alternate, each timed call right after an
untimed call of itself; each figure is the median of ``--repeat`` rounds.
The first calls compile the kernels (or load them from the cache), outside
every figure. "wins from" is the smallest size measured from which the
parallel path was faster at every larger size of that width. A size marked
* leaves batch norm a single row part, whose columns the parallel
statistics and backward split between the threads (``n_column_splits``).

    PYTHONPATH=src python scripts/thresholds.py [--threads 2] [--repeat 21] [--json F]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import numba
import numpy as np

from fastlayers import set_num_threads, threading_layer
from fastlayers._kernels._twins import TwinKernel, n_row_parts
from fastlayers._kernels.affine import _affine_backward, _affine_forward
from fastlayers._kernels.batchnorm import (
    _batchnorm_backward,
    _batchnorm_backward_stripes,
    _batchnorm_normalize,
    _batchnorm_stats,
    _batchnorm_train_stripes,
)
from fastlayers._kernels.relu import _relu_backward, _relu_forward
from fastlayers._table import BY_NAME
from fastlayers.bench import _cpu_model

KI, MI = 1 << 10, 1 << 20
RELU_SIZES = tuple(k * KI for k in (128, 256, 384, 512, 640, 768, 1024, 1536, 2048))  # bytes
BATCHNORM_SIZES = tuple(k * KI for k in (32, 48, 64, 80, 96, 112, 128, 192, 256))  # elements
AFFINE_SIZES = tuple(k * MI for k in (1, 2, 4, 8))  # output elements
AFFINE_WIDTH, AFFINE_OUTPUTS = 16, 1024  # D and M; the size sets N

# Layer -> (the twin kernels it runs, widths D, sizes in the kernels' unit).
LAYERS: dict[str, tuple[tuple[TwinKernel, ...], tuple[int, ...], tuple[int, ...]]] = {
    "relu_forward": ((_relu_forward,), (256,), RELU_SIZES),
    "relu_backward": ((_relu_backward,), (256,), RELU_SIZES),
    "batchnorm_forward": ((_batchnorm_stats, _batchnorm_normalize, _batchnorm_train_stripes), (64, 256, 2048, 4096),
                          BATCHNORM_SIZES),
    "batchnorm_backward": ((_batchnorm_backward, _batchnorm_backward_stripes), (64, 256, 2048, 4096), BATCHNORM_SIZES),
    "affine_forward": ((_affine_forward,), (AFFINE_WIDTH,), AFFINE_SIZES),
    "affine_backward": ((_affine_backward,), (AFFINE_WIDTH,), AFFINE_SIZES),
}


def shape_of(name: str, width: int, size: int, itemsize: int) -> tuple[int, ...]:
    """The table's input shape for a work of ``size`` in the unit of the layer's kernels."""
    per_element = itemsize if LAYERS[name][0][0].unit == "bytes" else 1
    if name.startswith("affine"):
        return size // (AFFINE_OUTPUTS * per_element), width, AFFINE_OUTPUTS
    return size // (width * per_element), width


def cases(names: list[str]) -> Iterator[tuple[str, int, int]]:
    """(layer, width, size) for every measurement."""
    for name in names:
        _, widths, sizes = LAYERS[name]
        for width in widths:
            for size in sizes:
                yield name, width, size


TWINS = tuple(kernel for kernels, _, _ in LAYERS.values() for kernel in kernels)
EVERY_SIZE = 1 << 62


@contextlib.contextmanager
def thresholds_at(value: int) -> Iterator[None]:
    """Every twin kernel's threshold set to ``value`` (0: always parallel;
    EVERY_SIZE: always serial), restored after."""
    saved = [kernel.threshold for kernel in TWINS]
    try:
        for kernel in TWINS:
            kernel.threshold = value
        yield
    finally:
        for kernel, threshold in zip(TWINS, saved):
            kernel.threshold = threshold


def time_paths(call: Callable[[], Any], repeats: int, budget: float) -> tuple[float, float, int]:
    """Median seconds of ``call`` on the serial and on the parallel twins, alternating, and the rounds taken."""
    samples: dict[str, list[float]] = {"serial": [], "parallel": []}
    thresholds = {"serial": EVERY_SIZE, "parallel": 0}
    started = time.perf_counter()
    for round_ in range(repeats):
        for path, times in samples.items():
            with thresholds_at(thresholds[path]):
                call()
                t0 = time.perf_counter()
                call()
                times.append(time.perf_counter() - t0)
        if round_ >= 2 and time.perf_counter() - started > budget:
            break
    return statistics.median(samples["serial"]), statistics.median(samples["parallel"]), len(samples["serial"])


def parallel_wins_from(rows: list[dict[str, Any]]) -> int | None:
    """The smallest size from which the parallel path won at every larger
    size measured (rows of one layer, dtype and width, by increasing size)."""
    wins_from = None
    for row in reversed(rows):
        if row["parallel_s"] >= row["serial_s"]:
            break
        wins_from = row["size"]
    return wins_from


def _label(size: int, unit: str) -> str:
    """1 MiB or 1Mi elements as "1Mi", 1024 as "1Ki", with a "B" for bytes."""
    scaled = f"{size // MI}Mi" if size % MI == 0 else f"{size // KI}Ki"
    return scaled + ("B" if unit == "bytes" else "")


def _single_part_mark(record: dict[str, Any]) -> str:
    return "*" if record["layer"].startswith("batchnorm") and n_row_parts(record["shape"][0]) == 1 else ""


def format_table(records: list[dict[str, Any]]) -> str:
    lines = []
    keys = list(dict.fromkeys((r["dtype"], r["layer"], r["width"]) for r in records))
    for dtype, name, width in keys:
        rows = [r for r in records if (r["dtype"], r["layer"], r["width"]) == (dtype, name, width)]
        kernels = LAYERS[name][0]
        unit = kernels[0].unit
        itemsize = np.dtype(dtype).itemsize
        thresholds = "/".join(_label(kernel.threshold_for(itemsize), unit) for kernel in kernels)
        pairs = ", ".join(f"{_label(r['size'], unit)}{_single_part_mark(r)}: "
                          f"{1e6 * r['serial_s']:.1f}/{1e6 * r['parallel_s']:.1f}" for r in rows)
        wins = parallel_wins_from(rows)
        lines.append(f"{dtype} {name} D={width} (threshold {thresholds}), serial/parallel us: {pairs}; "
                     f"parallel wins from {'never' if wins is None else _label(wins, unit)}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", nargs="+", choices=list(LAYERS), default=list(LAYERS))
    parser.add_argument("--dtype", nargs="+", default=["float32", "float64"])
    parser.add_argument("--threads", type=int, help="numba's and the BLAS's threads (default: numba's)")
    parser.add_argument("--repeat", type=int, default=21)
    parser.add_argument("--budget", type=float, default=1.0, help="seconds per case, at least 3 rounds")
    parser.add_argument("--json")
    args = parser.parse_args()
    if args.threads:
        set_num_threads(args.threads)
    threads = numba.get_num_threads()
    print(f"numpy {np.__version__}, numba {numba.__version__}, layer {threading_layer()}, {os.cpu_count()} cores "
          f"({_cpu_model()}), {threads} threads", flush=True)
    records = []
    for dtype in args.dtype:
        for name, width, size in cases(args.layers):
            layer = BY_NAME[name]
            shape = shape_of(name, width, size, np.dtype(dtype).itemsize)
            call_args = layer.call_args("fastlayers", layer.inputs(np.random.default_rng(0), shape, dtype))
            function = layer.function("fastlayers")
            serial_s, parallel_s, rounds = time_paths(lambda f=function, a=call_args: f(*a), args.repeat,
                                                      args.budget)
            records.append({"dtype": dtype, "layer": name, "width": width, "size": size, "shape": shape,
                            "serial_s": serial_s, "parallel_s": parallel_s, "rounds": rounds})
        print(format_table([r for r in records if r["dtype"] == dtype]), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"cpu": _cpu_model(), "cores": os.cpu_count(), "threads": threads, "numba": numba.__version__,
                       "records": records}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
