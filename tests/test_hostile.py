"""Hostile input (tests/scripts/hostile.py), in a subprocess so a crash fails a test."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

EXAMPLES = 1000


def test_hostile_inputs_return_reference_answers_or_documented_errors():
    script = Path(__file__).parent / "scripts" / "hostile.py"
    done = subprocess.run([sys.executable, str(script), str(EXAMPLES)], capture_output=True, text=True,
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
