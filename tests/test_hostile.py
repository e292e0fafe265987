"""Hostile input (tests/scripts/hostile.py), in a subprocess so a crash fails a test."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np

EXAMPLES = 1000
SCRIPT = Path(__file__).parent / "scripts" / "hostile.py"


def test_hostile_inputs_return_reference_answers_or_documented_errors():
    done = subprocess.run([sys.executable, str(SCRIPT), str(EXAMPLES)], capture_output=True, text=True,
                          timeout=900)
    # A negative return code is a signal: a segfault or an abort inside a kernel.
    assert done.returncode == 0, f"return code {done.returncode}\n{done.stdout}\n{done.stderr[-5000:]}"
    counts = dict(item.split("=") for item in done.stdout.strip().splitlines()[-1].split() if "=" in item)
    assert int(counts["cases"]) == EXAMPLES
    # Both outcomes, and calls with supplied result arrays, must be well
    # represented, or the generator has drifted.
    assert int(counts["returned"]) >= EXAMPLES // 10
    assert int(counts["raised"]) >= EXAMPLES // 10
    assert int(counts["with_supplied_results"]) >= EXAMPLES // 20
    print(done.stdout)


def test_a_result_array_over_an_input_is_checked_against_the_input_as_passed():
    # relu_backward(dout, x, dx=x) writes over its cache x: the script's
    # reference must see x as the call received it, not as the call left it
    # (a random example, x = -1 and dout = 1, once failed here, fastlayers
    # being right). In this process: nothing here can crash a kernel.
    spec = importlib.util.spec_from_file_location("hostile", SCRIPT)
    hostile = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hostile)
    x = np.array([-1.0, 2.0, -0.0, np.nan])
    hostile.check("relu_backward", (np.ones(4), x), {"dx": x})
    assert x.tobytes() == np.array([0.0, 1.0, 1.0, 0.0]).tobytes()
