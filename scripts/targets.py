"""Issue 4's performance targets, read off ``python -m fastlayers bench --json`` runs.

For each target it prints the figure each run reached (float32 / float64),
how many of the runs met it, and, where the kernel has a byte floor (the
bytes it must move over the run's copy bandwidth, plus its fresh outputs'
first touch), the figure a kernel running exactly at that floor would
reach, lowest to highest over the runs: a target well above it asks for
less time than a copy of the kernel's bytes takes on that machine. (A
measurement can land a little above its floor: the copy is itself a
noisy measurement.)

    python scripts/targets.py run1.json [run2.json ...]

The ratios are the bench's own: "x reference", "x numpy" (the ReLU's NumPy
one-liner) and "x bare" (fastlayers over NumPy's bare product or products,
where lower is better) pair fastlayers and the baseline timed alternating;
"x torch" and "% of floor" divide by fastlayers timed alone, as PyTorch
and the copy are timed.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from typing import Any

DTYPES = ("float32", "float64")


@dataclass(frozen=True)
class Target:
    kernel: str  # as the issue names it
    function: str  # the bench row
    size: str
    metric: str  # "reference", "torch", "numpy", "floor" or "bare"
    threshold: float

    @property
    def wording(self) -> str:
        if self.metric == "floor":
            return f">= {100 * self.threshold:.0f}% of floor"
        if self.metric == "bare":
            return f"<= {self.threshold:.2f}x bare product(s)"
        return f">= {self.threshold:g}x {self.metric}"

    def figure(self, row: dict[str, Any]) -> float | None:
        """The run's figure for this target, or None where the run lacks it (no PyTorch)."""
        if self.metric == "bare":
            return row["fastlayers_s"] / row["blas_s"]
        if self.metric in ("torch", "floor"):
            baseline, time = row[f"{self.metric}_s"], row["alone_s"]
        else:
            baseline, time = row[f"{self.metric}_s"], row["fastlayers_s"]
        return None if baseline is None else baseline / time

    def floor_bound(self, row: dict[str, Any]) -> float | None:
        """The figure a kernel running exactly at its byte floor would reach
        (ratio targets of kernels with a floor only)."""
        if row.get("floor_s") is None or self.metric in ("floor", "bare"):
            return None
        baseline = row[f"{self.metric}_s"]
        return None if baseline is None else baseline / row["floor_s"]

    def met(self, figure: float) -> bool:
        return figure <= self.threshold if self.metric == "bare" else figure >= self.threshold


def _targets() -> list[Target]:
    """The issue's table, row by row (medium, large, small), then its training-step targets."""
    table = [
        ("relu forward", "relu_forward", [("medium", "reference", 25), ("medium", "torch", 1.2),
                                          ("large", "floor", 0.85), ("small", "numpy", 1.5)]),
        ("relu backward", "relu_backward", [("medium", "reference", 5), ("large", "floor", 0.85),
                                            ("small", "numpy", 1.0)]),
        ("bn forward", "batchnorm_forward", [("medium", "reference", 20), ("medium", "torch", 1.2),
                                             ("large", "floor", 0.85), ("small", "reference", 8)]),
        ("bn backward", "batchnorm_backward", [("medium", "reference", 20), ("large", "floor", 0.85),
                                               ("small", "reference", 4)]),
        ("bn step (fwd+bwd)", "batchnorm_step", [("medium", "torch", 2.0), ("large", "torch", 1.8)]),
        ("affine forward", "affine_forward", [("medium", "bare", 1.10), ("large", "bare", 1.10),
                                              ("small", "reference", 2)]),
        ("affine backward", "affine_backward", [("medium", "bare", 1.10), ("large", "bare", 1.10),
                                                ("small", "reference", 2)]),
    ]
    return [Target(kernel, function, size, metric, threshold)
            for kernel, function, cases in table for size, metric, threshold in cases]


TARGETS = _targets()


def _format(target: Target, value: float | None) -> str:
    if value is None:
        return "-"
    return f"{100 * value:.0f}%" if target.metric == "floor" else f"{value:.2f}x"


def _span(target: Target, values: list[float | None]) -> str:
    """The lowest and highest of the runs' values ("-" if none): the floor
    rests on each run's own copy bandwidth, which swings from run to run."""
    known = sorted(value for value in values if value is not None)
    if not known:
        return "-"
    low, high = _format(target, known[0]), _format(target, known[-1])
    return low if low == high else f"{low}-{high}"


def target_rows(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One record per target: each run's figures and floor bounds by dtype, and how many figures met it."""
    records = []
    for target in TARGETS:
        figures, bounds = [], []
        for run in runs:
            rows = {(row["function"], row["size"], row["dtype"]): row for row in run["rows"]}
            found = [rows.get((target.function, target.size, dtype)) for dtype in DTYPES]
            figures.append([None if row is None else target.figure(row) for row in found])
            bounds.append([None if row is None else target.floor_bound(row) for row in found])
        measured = [value for run in figures for value in run if value is not None]
        records.append({"target": target, "figures": figures, "bounds": bounds,
                        "met": sum(target.met(value) for value in measured), "measured": len(measured)})
    return records


def format_targets(runs: list[dict[str, Any]]) -> str:
    lines = [["kernel", "size", "target"] + [f"run {k + 1} f32 / f64" for k in range(len(runs))]
             + ["met", "floor allows f32 / f64"]]
    for record in target_rows(runs):
        target = record["target"]
        cells = [target.kernel, target.size, target.wording]
        cells += [" / ".join(_format(target, value) for value in run) for run in record["figures"]]
        cells.append(f"{record['met']} of {record['measured']}")
        cells.append(" / ".join(_span(target, [run[k] for run in record["bounds"]]) for k in range(len(DTYPES))))
        lines.append(cells)
    widths = [max(len(line[k]) for line in lines) for k in range(len(lines[0]))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip() for line in lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="JSON files written by `python -m fastlayers bench --json`")
    args = parser.parse_args(argv)
    runs = []
    for path in args.runs:
        with open(path) as file:
            runs.append(json.load(file))
    print(format_targets(runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
