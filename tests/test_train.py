"""The training example: a NumPy MLP on the digits, on both backends."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from fastlayers.__main__ import main
from fastlayers.train import load_digits, softmax_loss, train_both, train_epochs


def test_short_run_learns_and_backends_agree():
    data = load_digits(seed=3)
    history = train_both(data, hidden=(64, 32), epochs=3, batch_size=50, max_steps=4, seed=3)
    reference, fast = history["reference"], history["fastlayers"]
    assert len(reference) == len(fast) == 3
    for r, f in zip(reference, fast):
        assert abs(r.loss - f.loss) <= 1e-6  # float64
        assert r.val_accuracy == f.val_accuracy
    assert fast[-1].loss < fast[0].loss
    assert fast[-1].val_accuracy > 0.5  # ten classes: chance is 0.1


def test_float32_run_tracks_the_reference():
    data = load_digits(seed=1, dtype=np.float32)
    assert data.x_train.dtype == np.float32
    history = train_both(data, hidden=(32,), epochs=2, batch_size=100, max_steps=3, seed=1)
    for r, f in zip(history["reference"], history["fastlayers"]):
        assert abs(r.loss - f.loss) <= 1e-4 * r.loss


def test_same_seed_same_run():
    data = load_digits(seed=0)
    first = [e.loss for e in train_epochs("fastlayers", data, hidden=(16,), epochs=2, max_steps=2)]
    second = [e.loss for e in train_epochs("fastlayers", data, hidden=(16,), epochs=2, max_steps=2)]
    assert first == second


def test_softmax_loss_gradient():
    rng = np.random.default_rng(0)
    scores = rng.standard_normal((5, 4))
    y = np.array([0, 3, 1, 1, 2])
    loss, grad = softmax_loss(scores, y)
    h = 1e-6
    numeric = np.empty_like(scores)
    for index in np.ndindex(scores.shape):
        shifted = scores.copy()
        shifted[index] += h
        numeric[index] = (softmax_loss(shifted, y)[0] - loss) / h
    np.testing.assert_allclose(grad, numeric, atol=1e-5)


def test_command_prints_both_runs_and_plots(tmp_path, capsys):
    plot = tmp_path / "loss.png"
    assert main(["train", "--epochs", "2", "--hidden", "32", "--plot", str(plot)]) == 0
    output = capsys.readouterr().out
    assert "loss (reference)" in output and "speed-up" in output and "largest loss difference" in output
    epoch_lines = [line for line in output.splitlines() if line.split() and line.split()[0] in ("1", "2")]
    assert len(epoch_lines) == 2
    has_matplotlib = importlib.util.find_spec("matplotlib") is not None
    assert plot.exists() == has_matplotlib


@pytest.mark.parametrize("argv", [["train", "--hidden"], ["train", "--batch-size", "-1"]])
def test_bad_options(argv):
    with pytest.raises(SystemExit):
        main(argv)
