"""Shared machinery of the asv suite, driven by fastlayers' table of layers.

Every class times one layer family (a forward and its backward) over
dtype x size x implementation, where the implementation is fastlayers or the
NumPy reference. ``setup`` builds seeded inputs and makes one call of each
function, so compilation never enters a ``time_`` figure.
"""

from __future__ import annotations

import numpy as np

from fastlayers._table import BY_NAME, SIZES
from fastlayers.bench import _alternate

DTYPES = ["float32", "float64"]
IMPLEMENTATIONS = ["fastlayers", "reference"]


def prepared_call(name: str, implementation: str, dtype: str, size: str):
    """A zero-argument callable running layer ``name`` on seeded inputs, warmed up."""
    layer = BY_NAME[name]
    inputs = layer.inputs(np.random.default_rng(0), size, dtype)
    function = layer.function(implementation)
    args = layer.call_args(implementation, inputs)

    def call():
        return function(*args)

    call()  # compile, or load from the on-disk cache
    return call


def speedup(name: str, dtype: str, size: str, repeats: int = 5, baseline: str = "reference") -> float:
    """Baseline time / fastlayers time, medians, measured as ``python -m
    fastlayers bench`` measures them (alternating round by round, each
    timed call right after an untimed call of itself)."""
    times = _alternate({"fastlayers": prepared_call(name, "fastlayers", dtype, size),
                        baseline: prepared_call(name, baseline, dtype, size)}, repeats, budget=float("inf"))
    return times[baseline] / times["fastlayers"]


class _LayerFamily:
    """time_forward / time_backward for one family; subclasses name the pair."""

    forward = ""
    backward = ""
    params = (DTYPES, list(SIZES), IMPLEMENTATIONS)
    param_names = ["dtype", "size", "implementation"]
    timeout = 300

    def setup(self, dtype, size, implementation):
        self.forward_call = prepared_call(self.forward, implementation, dtype, size)
        self.backward_call = prepared_call(self.backward, implementation, dtype, size)

    def time_forward(self, dtype, size, implementation):
        self.forward_call()

    def time_backward(self, dtype, size, implementation):
        self.backward_call()


class _LayerFamilyMemory:
    """Peak memory of forward + backward at the large size."""

    forward = ""
    params = (DTYPES, IMPLEMENTATIONS)
    param_names = ["dtype", "implementation"]
    timeout = 300

    def setup(self, dtype, implementation):
        layer = BY_NAME[self.forward]
        self.inputs = layer.inputs(np.random.default_rng(0), "large", dtype)
        # Warm the kernels on a small input so compilation is not measured.
        prepared_call(self.forward, implementation, dtype, "small")
        prepared_call(self.forward.replace("forward", "backward"), implementation, dtype, "small")

    def peakmem_forward_backward(self, dtype, implementation):
        forward = BY_NAME[self.forward]
        backward = BY_NAME[self.forward.replace("forward", "backward")]
        forward_args = forward.call_args(implementation, self.inputs)
        _, cache = forward.function(implementation)(*forward_args)
        backward.function(implementation)(self.inputs["dout"], cache)


class _LayerFamilySpeedup:
    """Speed-up over the baseline (the reference, or for the sandwiches also
    fastlayers' single layers composed), both measured inside the same benchmark."""

    forward = ""
    backward = ""
    params = (DTYPES, list(SIZES), ["reference"])
    param_names = ["dtype", "size", "baseline"]
    timeout = 600
    number = 1
    repeat = 1

    def track_speedup_forward(self, dtype, size, baseline):
        return speedup(self.forward, dtype, size, baseline=baseline)

    track_speedup_forward.unit = "x baseline"

    def track_speedup_backward(self, dtype, size, baseline):
        return speedup(self.backward, dtype, size, baseline=baseline)

    track_speedup_backward.unit = "x baseline"
