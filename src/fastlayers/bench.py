"""``python -m fastlayers bench``: fastlayers against its baselines, in one run.

For every function, dtype and size it times fastlayers and the NumPy
reference (the seed page), alternating them round by round, each timed call
right after an untimed call of itself (so compile time never enters a
figure, and each finds its own data in cache), and taking medians; PyTorch
CPU, when importable, is timed the same way right after, in a block of its
own, and so is fastlayers again ("alone") for the ratios against PyTorch
and the copy, which are timed call after call too. Beside each row it
measures the machine's ceilings for that row's arrays: the copy bandwidth
(a parallel copy into a reused array) and the first-touch cost of a fresh
output, right after the row's own blocks, and NumPy's bare ``x @ w`` for
the affine shapes, alternating with the layer.
Memory-bound kernels are reported as "% of floor" (floor / time, where the
floor is the bytes the kernel must move over the copy bandwidth plus the
first-touch cost of its outputs); the affine layer as its time over the bare
products'. Compile time is measured on its own, in fresh processes.
"""

from __future__ import annotations

import functools
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numba
import numpy as np

from . import __version__
from ._kernels._disk_cache import cached_njit
from ._kernels._twins import run_parallel
from ._table import BATCHNORM_STEP, LAYERS, SIZES, Layer

DTYPES = ("float32", "float64")

# Bytes each memory-bound kernel must move, in units of one (N, D) array:
# ReLU fwd reads x, writes out; bwd reads dout and x, writes dx; batch-norm
# fwd reads x for the statistics, again to normalise, writes out; bwd reads
# dout and x for the reductions, both again for dx, writes dx. Each has one
# fresh (N, D) output, whose first-touch cost the floor includes, except
# the batch-norm training step (forward + backward), whose outputs are
# preallocated.
ARRAY_PASSES = {"relu_forward": 2, "relu_backward": 3, "batchnorm_forward": 3, "batchnorm_backward": 5,
                "batchnorm_step": 8}
FRESH_OUTPUTS = {"batchnorm_step": 0}


def bytes_moved(function: str, shape: tuple[int, ...], dtype: str) -> int:
    """The bytes ``function`` must move over (N, D) arrays of ``shape``."""
    return ARRAY_PASSES[function] * int(np.prod(shape)) * np.dtype(dtype).itemsize


def floor_seconds(function: str, shape: tuple[int, ...], dtype: str, bandwidth_gbs: float,
                  first_touch_s: float) -> float:
    """The least time ``function`` can take: its bytes over the copy bandwidth, plus its fresh outputs' first touch."""
    return (bytes_moved(function, shape, dtype) / (bandwidth_gbs * 1e9)
            + FRESH_OUTPUTS.get(function, 1) * first_touch_s)


@cached_njit(parallel=True)
def _parallel_copy(source, target):
    for i in numba.prange(source.size):
        target[i] = source[i]


# A sample lasts at least this long: a call of a few microseconds is timed
# as a loop of calls (as timeit does), so that the clock's own cost and
# resolution (about 0.1 us) stay out of the figure.
MIN_SAMPLE_S = 1e-4
MAX_CALLS_PER_SAMPLE = 10_000
CALIBRATION_CALLS = 10
# Longer than OpenBLAS's idle threads spin after a product, and than
# PyTorch's OpenMP threads after a call (see bench_row).
BLAS_SPIN_S = 0.2
TORCH_SPIN_S = 0.5


def _seconds(call: Callable[[], Any], number: int = 1) -> float:
    """Seconds per call of ``number`` calls in a row."""
    start = time.perf_counter()
    for _ in range(number):
        call()
    return (time.perf_counter() - start) / number


def _calls_per_sample(call: Callable[[], Any]) -> int:
    """How many calls in a row make a sample of at least MIN_SAMPLE_S.

    A call's time is the fastest of up to CALIBRATION_CALLS timed calls,
    after an untimed one: right after other work the first calls run slow
    (after an 8 MB sum, a 64x100 batchnorm_forward took 36-39 us, then
    10-11, 8 and 7.5-8, and about 7 from the fifth call on), and a single
    timed call made samples of one call where a dozen were meant
    (BENCHMARKS.md, session 19). The timed calls stop once they have taken
    10 x MIN_SAMPLE_S, so a long call is timed once, as before.
    """
    call()
    once = spent = _seconds(call)
    for _ in range(CALIBRATION_CALLS - 1):
        if spent >= 10 * MIN_SAMPLE_S:
            break
        seconds = _seconds(call)
        once, spent = min(once, seconds), spent + seconds
    if once >= MIN_SAMPLE_S:
        return 1
    return min(MAX_CALLS_PER_SAMPLE, int(MIN_SAMPLE_S / max(once, 1e-8)) + 1)


def _alternate(calls: dict[str, Callable[[], Any]], repeats: int, budget: float,
               statistic: Callable[[list[float]], float] = statistics.median) -> dict[str, float]:
    """Median (or ``statistic``) seconds of each call, measured in turn.

    Round by round the calls alternate, so a slow spell of the machine hits
    them all alike; within a round each timed call comes right after an
    untimed call of itself, so it finds its own data in cache, as a layer
    in a training loop finds the activations the previous layer just wrote.
    (Timed straight after another implementation's call, a kernel over a
    medium array that fits in L3 was timed reading it back from memory:
    relu_forward 256x4096 float32 took 0.33 ms that way, 0.06 ms after itself.)
    Calls shorter than MIN_SAMPLE_S are timed as loops of calls.
    """
    numbers = {name: _calls_per_sample(call) for name, call in calls.items()}
    samples: dict[str, list[float]] = {name: [] for name in calls}
    started = time.perf_counter()
    for round_ in range(repeats):
        for name, call in calls.items():
            call()
            samples[name].append(_seconds(call, numbers[name]))
        if round_ >= 2 and time.perf_counter() - started > budget:
            break
    return {name: statistic(times) for name, times in samples.items()}


@dataclass
class Row:
    function: str
    dtype: str
    size: str
    shape: tuple[int, ...]
    fastlayers_s: float
    reference_s: float
    torch_s: float | None = None
    bytes_moved: int | None = None
    floor_s: float | None = None
    blas_s: float | None = None
    composed_s: float | None = None  # sandwiches: fastlayers' single layers one after the other
    numpy_s: float | None = None  # the ReLU's NumPy one-liner (NUMPY_ONE_LINERS)
    # fastlayers timed in a block of its own, as PyTorch and the copy are:
    # the figure that "vs torch" and "% of floor" compare (see bench_row,
    # which measures it for every row with either).
    alone_s: float | None = None
    # The ceilings behind floor_s, measured beside this row (measure_ceilings).
    copy_bandwidth_gbs: float | None = None
    first_touch_s: float | None = None

    @property
    def speedup(self) -> float:
        return self.reference_s / self.fastlayers_s


def _torch_calls(layer: Layer, inputs: dict[str, np.ndarray]) -> Callable[[], Any] | None:
    """The PyTorch CPU counterpart of ``layer``, or None without torch."""
    try:
        import torch
    except ImportError:
        return None
    functional = torch.nn.functional
    t = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in inputs.items()}
    name = layer.name
    if name == "affine_forward":
        return lambda: torch.addmm(t["b"], t["x"], t["w"])
    if name == "relu_forward":
        return lambda: torch.relu(t["x"])
    if name == "batchnorm_forward":
        return lambda: functional.batch_norm(t["x"], None, None, t["gamma"], t["beta"], training=True)
    if name not in ("affine_backward", "relu_backward", "batchnorm_backward", "batchnorm_step"):
        return None
    # Backward: autograd through the forward graph. The leaves are cloned and
    # the graph built in the first call, which _alternate never times, not
    # here: PyTorch's OpenMP threads spin on after its work and shared the
    # cores with whatever was timed next, fastlayers' block alone (256x4096
    # float32 batchnorm_backward alone: 576 us after the graph was built
    # here, 322-339 us without; BENCHMARKS.md, session 26).
    @functools.cache
    def leaves() -> dict[str, Any]:
        """The inputs as leaves that need gradients, cloned once."""
        return {k: v.clone().requires_grad_(True) for k, v in t.items() if k != "dout"}

    def forward() -> tuple[Any, list[Any]]:
        """The layer's forward on the leaves: (output, the leaves to differentiate by)."""
        leaf = leaves()
        x = leaf["x"]
        if name == "affine_backward":
            return torch.addmm(leaf["b"], x, leaf["w"]), [x, leaf["w"], leaf["b"]]
        if name == "relu_backward":
            return torch.relu(x), [x]
        return (functional.batch_norm(x, None, None, leaf["gamma"], leaf["beta"], training=True),
                [x, leaf["gamma"], leaf["beta"]])

    if name == "batchnorm_step":  # a training step builds the graph anew, then differentiates it
        return lambda: torch.autograd.grad(*forward(), grad_outputs=t["dout"])
    graph = functools.cache(forward)  # a backward's graph: built once, kept for reuse
    return lambda: torch.autograd.grad(*graph(), grad_outputs=t["dout"], retain_graph=True)


def measure_ceilings(shape: tuple[int, ...], dtype: str, repeats: int = 21) -> tuple[float, float]:
    """Copy bandwidth (GB/s, read + write) and first-touch seconds for one array.

    The bandwidth is that of the faster of a parallel copy and NumPy's
    serial ``copyto`` of an array of ``shape`` into a reused array (so a
    size that fits in cache gets its cache bandwidth, and a tiny one is not
    charged a thread launch); the first-touch cost is a copy into a fresh
    ``np.empty`` minus the same copy into the reused array. The copy runs
    at numba's default chunk size, as the kernels it is held against do
    (``run_parallel``), whatever chunk size the calling thread has set.
    """
    source = np.ones(int(np.prod(shape)), dtype=dtype)
    reused = np.empty_like(source)
    times = _alternate(
        {
            "fresh": lambda: run_parallel(_parallel_copy, source, np.empty_like(source)),
            "reused": lambda: run_parallel(_parallel_copy, source, reused),
            "serial": lambda: np.copyto(reused, source),
        },
        repeats,
        2.0,
        statistic=min,
    )
    copy_s = min(times["reused"], times["serial"])
    return 2 * source.nbytes / copy_s / 1e9, max(0.0, times["fresh"] - times["reused"])


def _blas_baseline(layer: Layer, inputs: dict[str, np.ndarray]) -> Callable[[], Any]:
    x, w, dout = inputs["x"], inputs["w"], inputs["dout"]
    if layer.name.endswith("forward"):
        return lambda: x @ w
    return lambda: (dout @ w.T, x.T @ dout)


# The ReLU's NumPy one-liners (issue 4 sets its small-size targets against
# them), named as the table prints them.
NUMPY_ONE_LINERS = {"relu_forward": "np.maximum(x, 0)", "relu_backward": "dout * (x >= 0)"}


def _numpy_baseline(layer: Layer, inputs: dict[str, np.ndarray]) -> Callable[[], Any]:
    x, dout = inputs["x"], inputs["dout"]
    if layer.name == "relu_forward":
        return lambda: np.maximum(x, 0)
    return lambda: dout * (x >= 0)


def bench_row(layer: Layer, dtype: str, size: str, repeats: int, budget: float, with_torch: bool) -> Row:
    rng = np.random.default_rng(0)
    inputs = layer.inputs(rng, size, dtype)
    calls: dict[str, Callable[[], Any]] = {}
    for implementation in ("fastlayers", "reference") + (("composed",) if layer.sandwich else ()):
        function = layer.function(implementation)
        args = layer.call_args(implementation, inputs)
        calls[implementation] = lambda function=function, args=args: function(*args)
    if layer.family == "affine":
        calls["blas"] = _blas_baseline(layer, inputs)
    if layer.name in NUMPY_ONE_LINERS:
        calls["numpy"] = _numpy_baseline(layer, inputs)
    with np.errstate(all="ignore"):
        times = _alternate(calls, repeats, budget)
    torch_call = _torch_calls(layer, inputs) if with_torch else None
    if torch_call is not None or layer.name in ARRAY_PASSES:
        # PyTorch and the copy are timed in blocks of their own, call after
        # call; so is fastlayers for the ratios against them. Right after
        # other work a call runs slower for about a millisecond, longer than
        # the one untimed call absorbs (256x4096 float64 relu_forward: 175-233
        # us alternating with the reference, 106-111 us alone; BENCHMARKS.md,
        # session 9).
        times["alone"] = _alternate({"fastlayers": calls["fastlayers"]}, repeats, budget)["fastlayers"]
    if torch_call is not None:
        # Timed in a block of its own: PyTorch's OpenMP threads spin after
        # each call and, interleaved, slowed the other calls 2x here.
        times.update(_alternate({"torch": torch_call}, repeats, budget))
        time.sleep(TORCH_SPIN_S)  # let them go idle before the next measurement
    elif layer.family == "affine":
        # Likewise NumPy's OpenBLAS: its idle threads spin for about 0.1 s
        # after a product (2**28 clock ticks by default), and a parallel
        # kernel run meanwhile shares the cores with them (256x4096 float32
        # relu_forward: 320-340 us within 80 ms of a product, 200 us after;
        # BENCHMARKS.md, session 19). The next row starts once they sleep.
        time.sleep(BLAS_SPIN_S)
    shape = SIZES[size][layer.family]
    row = Row(layer.name, dtype, size, shape, times["fastlayers"], times["reference"], times.get("torch"),
              blas_s=times.get("blas"), composed_s=times.get("composed"), numpy_s=times.get("numpy"),
              alone_s=times.get("alone"))
    if layer.name in ARRAY_PASSES:
        # The ceilings of this row's (N, D) array, measured now rather than
        # once a run: the first touch of a fresh output above all drifts
        # with the machine's state. Measured once a run, at its best, it
        # made a large float32 batchnorm_forward that had slowed with the
        # machine (as PyTorch's call had) 83% of its floor, 104% in the
        # next run (BENCHMARKS.md, session 23). After the row's own blocks,
        # so the layer's figures are timed as before.
        row.copy_bandwidth_gbs, row.first_touch_s = measure_ceilings(shape, dtype, repeats)
        row.bytes_moved = bytes_moved(layer.name, shape, dtype)
        row.floor_s = floor_seconds(layer.name, shape, dtype, row.copy_bandwidth_gbs, row.first_touch_s)
    return row


def measure_compile(cold: bool, processes: int = 1, first_calls: bool = True) -> dict[str, float]:
    """Seconds for a new process to import fastlayers and call all six once.

    ``cold``: with an empty NUMBA_CACHE_DIR, so every kernel compiles (both
    twins, both dtypes, via ``warmup``); then the same again with that cache
    now warm. Without ``cold`` only the warm figure, with the default cache
    (run twice, the second reported, so it is warm even on a first run).
    The cold compile is ``warmup(processes=processes)``'s. With
    ``first_calls`` False the cold figure is the only one: for a caller
    that measures the warm first calls elsewhere, so it needs ``cold``.
    """
    if not cold and not first_calls:
        raise ValueError("measure_compile: first_calls=False leaves only the cold figure, so it needs cold=True")
    script = (
        "import time; t0 = time.perf_counter()\n"
        "import numpy as np, fastlayers as fl\n"
        "t1 = time.perf_counter()\n"
        "import sys\n"
        "if sys.argv[1] == 'all':\n"
        "    fl.warmup(processes=int(sys.argv[2]))\n"
        "else:\n"
        "    x = np.ones((8, 4)); out, c = fl.affine_forward(x, np.ones((4, 4)), np.ones(4)); fl.affine_backward(out, c)\n"
        "    out, c = fl.relu_forward(x); fl.relu_backward(out, c)\n"
        "    out, c = fl.batchnorm_forward(x, np.ones(4), np.ones(4), {'mode': 'train'}); fl.batchnorm_backward(out, c)\n"
        "print(t1 - t0, time.perf_counter() - t0)\n"
    )

    def run(env: dict[str, str], what: str) -> tuple[float, float]:
        done = subprocess.run([sys.executable, "-c", script, what, str(processes)], env=env, capture_output=True,
                              text=True, check=True)
        import_s, total_s = map(float, done.stdout.split())
        return import_s, total_s

    result: dict[str, float] = {}
    env = dict(os.environ)
    if cold:
        with tempfile.TemporaryDirectory() as cache_dir:
            env["NUMBA_CACHE_DIR"] = cache_dir
            result["cold_compile_all_s"] = run(env, "all")[1]
            if first_calls:
                run(env, "six")  # the warm run below measures the six calls
                result["import_s"], result["warm_first_calls_s"] = run(env, "six")
    else:
        run(env, "six")
        result["import_s"], result["warm_first_calls_s"] = run(env, "six")
    return result


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _fmt_time(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.1f} us"
    if seconds < 1:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds:.2f} s"


def aligned(lines: list[list[str]]) -> str:
    """A text table: the first line is the header, underlined; columns left-aligned."""
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    text = ["  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip() for line in lines]
    text.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(text)


def copy_bandwidth_ranges(rows: list[Row]) -> str:
    """The copy bandwidths measured beside ``rows``, as "size/dtype low-high
    GB/s" (one figure where the row's measurements agree to 0.1 GB/s)."""
    by_key: dict[str, list[float]] = {}
    for row in rows:
        if row.copy_bandwidth_gbs is not None:
            by_key.setdefault(f"{row.size}/{row.dtype}", []).append(row.copy_bandwidth_gbs)
    ranges = []
    for key, values in by_key.items():
        low, high = f"{min(values):.1f}", f"{max(values):.1f}"
        ranges.append(f"{key} {low if low == high else f'{low}-{high}'} GB/s")
    return ", ".join(ranges) or "none"


def format_table(rows: list[Row], has_torch: bool) -> str:
    header = ["function", "dtype", "size", "fastlayers", "reference", "speed-up", "alone"]
    if has_torch:
        header += ["torch", "vs torch"]
    header += ["vs machine"]
    lines = [header]
    for row in rows:
        cells = [row.function, row.dtype, row.size, _fmt_time(row.fastlayers_s), _fmt_time(row.reference_s),
                 f"{row.speedup:.1f}x", _fmt_time(row.alone_s)]
        if has_torch:
            cells += [_fmt_time(row.torch_s), f"{row.torch_s / row.alone_s:.2f}x" if row.torch_s else "-"]
        if row.floor_s is not None:
            cells.append(f"{100 * row.floor_s / row.alone_s:.0f}% of floor ({row.bytes_moved / 1e6:.1f} MB)")
        elif row.blas_s is not None:
            bare = "x@w" if row.function.endswith("forward") else "2 products"
            cells.append(f"{row.fastlayers_s / row.blas_s:.2f}x bare {bare}")
        else:
            cells.append("-")
        if row.composed_s is not None:
            cells[-1] += f"; fused {row.composed_s / row.fastlayers_s:.2f}x composed"
        if row.numpy_s is not None:
            cells[-1] += f"; {row.numpy_s / row.fastlayers_s:.2f}x {NUMPY_ONE_LINERS[row.function]}"
        lines.append(cells)
    return aligned(lines)


def plot(rows: list[Row], path: str) -> None:
    """Time against work, log-log, one panel per function (needs matplotlib)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [layer.name for layer in [*LAYERS, BATCHNORM_STEP]]
    n_rows = -(-len(names) // 3)
    fig, axes = plt.subplots(n_rows, 3, figsize=(14, 4 * n_rows))
    for ax, name in zip(axes.flat, names):
        for dtype, style in zip(DTYPES, ("--", "-")):
            selected = sorted((r for r in rows if r.function == name and r.dtype == dtype),
                              key=lambda r: int(np.prod(r.shape)))
            if not selected:
                continue
            work = [int(np.prod(r.shape)) for r in selected]
            ax.plot(work, [r.fastlayers_s for r in selected], "o" + style, color="C0", label=f"fastlayers {dtype}")
            ax.plot(work, [r.reference_s for r in selected], "s" + style, color="C1", label=f"reference {dtype}")
            if any(r.composed_s for r in selected):
                ax.plot(work, [r.composed_s for r in selected], "d" + style, color="C3", label=f"composed {dtype}")
            if any(r.torch_s for r in selected):
                ax.plot(work, [r.torch_s for r in selected], "^" + style, color="C2", label=f"torch {dtype}")
            floors = [r.floor_s or r.blas_s for r in selected]
            if all(floors):
                label = "floor" if selected[0].floor_s else "bare BLAS"
                ax.plot(work, floors, style, color="k", alpha=0.6, label=f"{label} {dtype}")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(name)
        ax.set_xlabel("elements (N*D, or N*D*M for affine)")
        ax.set_ylabel("seconds (median)")
        ax.legend(fontsize=7)
    for ax in axes.flat[len(names):]:
        ax.set_visible(False)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def torch_wanted(no_torch: bool) -> bool:
    """Whether to time PyTorch: importable, and not left out with ``--no-torch``."""
    if no_torch:
        return False
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def write_json(path: str, results: dict[str, Any]) -> None:
    """Write a run's ``results`` to ``path`` as JSON, after the facts about
    the machine and the build that every such document starts with."""
    from . import threading_layer

    document = {"version": __version__, "cpu": _cpu_model(), "cores": os.cpu_count(),
                "threading_layer": threading_layer(), "numpy": np.__version__, "numba": numba.__version__,
                **results}
    with open(path, "w") as handle:
        json.dump(document, handle, indent=2)
    print(f"wrote {path}")


def progress(message: str) -> None:
    """Overwrite the status line on stderr."""
    print(f"\r\033[K{message}", end="", file=sys.stderr, flush=True)


def run(args: Any) -> int:
    sizes = ["small", "medium"] if args.quick and args.size == "all" else (
        list(SIZES) if args.size == "all" else [args.size])
    dtypes = list(DTYPES) if args.dtype == "all" else [args.dtype]
    repeats, budget = (5, 0.5) if args.quick else (args.repeat, 3.0)
    has_torch = torch_wanted(args.no_torch)

    from . import get_num_threads, threading_layer

    progress("warming up kernels")
    from . import warmup

    # One process a core (numba compiles on one), and no more than warmup's
    # jobs, a dtype's twin each: a cold start in about half the time on 2
    # cores, a warm one about 1 s longer (BENCHMARKS.md, session 20).
    processes = min(os.cpu_count() or 1, 2 * len(DTYPES))
    warmup(tuple(dtypes), processes=processes)

    rows = []
    plan = [(layer, dtype, size) for size in sizes for dtype in dtypes for layer in [*LAYERS, BATCHNORM_STEP]]
    for index, (layer, dtype, size) in enumerate(plan, 1):
        progress(f"[{index}/{len(plan)}] {layer.name} {dtype} {size}")
        rows.append(bench_row(layer, dtype, size, repeats, budget, has_torch))
    progress("measuring compile time in fresh processes")
    compile_times = measure_compile(cold=not args.quick)
    if not args.quick and processes > 1:
        in_processes = measure_compile(cold=True, processes=processes, first_calls=False)
        compile_times["cold_compile_in_processes_s"] = in_processes["cold_compile_all_s"]
        compile_times["cold_compile_processes"] = processes
    progress("")
    print("", file=sys.stderr)

    print(f"fastlayers {__version__} bench: numpy {np.__version__}, numba {numba.__version__}, "
          f"threading layer {threading_layer()}, {get_num_threads()} threads, "
          f"{os.cpu_count()} cores ({_cpu_model()})")
    print("copy bandwidth (parallel copy of one (N, D) array into a reused one), measured beside each row with a "
          "floor: " + copy_bandwidth_ranges(rows))
    print(f"medians of up to {repeats} alternating repeats, each right after an untimed call of itself; "
          f"'alone' = fastlayers timed again in a block of its own, as PyTorch and the copy are")
    print("vs torch = torch / alone; % of floor = (bytes / copy bandwidth + first touch of fresh outputs) / alone")
    print("sandwiches: 'fused Nx composed' = time of fastlayers' single layers called one after the other / "
          "the fused sandwich's; batchnorm_step = forward + backward in train mode, fastlayers into "
          "preallocated arrays\n")
    print(format_table(rows, has_torch))
    print()
    if "cold_compile_all_s" in compile_times:
        in_processes = ""
        if "cold_compile_in_processes_s" in compile_times:
            in_processes = (f", {compile_times['cold_compile_in_processes_s']:.1f} s in "
                            f"{compile_times['cold_compile_processes']} processes at once (warmup(processes=...))")
        print(f"compile, cold (every kernel, both twins, {'/'.join(DTYPES)}): "
              f"{compile_times['cold_compile_all_s']:.1f} s in one process{in_processes}")
    print(f"new process, on-disk cache warm: import {compile_times['import_s']:.2f} s, "
          f"import + first call of all six {compile_times['warm_first_calls_s']:.2f} s")
    sizes_text = ", ".join(f"{name} {SIZES[name]['nd'][0]}x{SIZES[name]['nd'][1]} "
                           f"(affine {'x'.join(map(str, SIZES[name]['affine']))})" for name in sizes)
    print(f"sizes: {sizes_text}")

    if args.json:
        write_json(args.json, {"threads": get_num_threads(), "compile": compile_times,
                               "rows": [dict(asdict(r), speedup=r.speedup) for r in rows]})
    if args.plot:
        try:
            plot(rows, args.plot)
        except ImportError:
            print("--plot needs matplotlib: pip install 'fastlayers[bench]'", file=sys.stderr)
            return 1
        print(f"wrote {args.plot}")
    return 0
