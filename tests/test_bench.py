"""The main job, `python -m fastlayers bench`, runs and reports what it measured."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from fastlayers.__main__ import main
from fastlayers._table import BATCHNORM_STEP, BY_NAME, LAYERS


def test_bench_small_run_writes_table_and_json(tmp_path):
    target = tmp_path / "bench.json"
    done = subprocess.run(
        [sys.executable, "-m", "fastlayers", "bench", "--quick", "--size", "small", "--dtype", "float64",
         "--no-torch", "--json", str(target)],
        capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr
    for name in ("affine_forward", "relu_backward", "batchnorm_backward", "% of floor", "bare x@w",
                 "import + first call of all six", "affine_batchnorm_relu_backward", "composed", "batchnorm_step", "np.maximum(x, 0)", "dout * (x >= 0)"):
        assert name in done.stdout
    document = json.loads(target.read_text())
    assert [row["function"] for row in document["rows"]] == [layer.name for layer in [*LAYERS, BATCHNORM_STEP]]
    for row in document["rows"]:
        assert (row["composed_s"] is not None) == BY_NAME[row["function"]].sandwich
        assert (row["numpy_s"] is not None) == row["function"].startswith("relu_")
    for row in document["rows"]:
        assert row["fastlayers_s"] > 0 and row["reference_s"] > 0
        assert row["speedup"] == pytest.approx(row["reference_s"] / row["fastlayers_s"])
    assert document["compile"]["warm_first_calls_s"] > 0


@pytest.mark.parametrize("argv", [["bench", "--size", "huge"], ["bench", "--repeat", "0"], ["train", "--epochs", "0"],
                                  ["train", "--dtype", "float16"], ["serve"]])
def test_bad_options_exit_with_usage(argv, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    assert "usage:" in capsys.readouterr().err


def test_short_calls_are_timed_as_loops_of_calls():
    from fastlayers.bench import MIN_SAMPLE_S, _alternate

    calls = {"fast": 0, "slow": 0}

    def fast():
        calls["fast"] += 1

    def slow():
        calls["slow"] += 1
        time.sleep(MIN_SAMPLE_S)

    times = _alternate({"fast": fast, "slow": slow}, repeats=3, budget=float("inf"))
    # slow: one calibration call, one timed call, then 3 rounds of an untimed and a timed call
    assert calls["slow"] == 2 + 3 * 2
    assert calls["fast"] > 3 * 10  # each sample a loop of many calls
    assert 0 < times["fast"] < MIN_SAMPLE_S <= times["slow"]
