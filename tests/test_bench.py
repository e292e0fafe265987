"""The main job, `python -m fastlayers bench`, runs and reports what it measured."""

from __future__ import annotations

import json
import subprocess
import sys

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
                 "import + first call of all six", "affine_batchnorm_relu_backward", "composed", "batchnorm_step"):
        assert name in done.stdout
    document = json.loads(target.read_text())
    assert [row["function"] for row in document["rows"]] == [layer.name for layer in [*LAYERS, BATCHNORM_STEP]]
    for row in document["rows"]:
        assert (row["composed_s"] is not None) == BY_NAME[row["function"]].sandwich
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
