"""The serial and the parallel twin of every kernel give bitwise the same results."""

from __future__ import annotations

import numpy as np
import pytest

import fastlayers as fl
from fastlayers._kernels._twins import forced_path
from fastlayers._table import LAYERS

from conftest import DTYPES, bitwise_equal


def _arrays(result):
    if isinstance(result, np.ndarray):
        return [result]
    arrays = [r for r in result if isinstance(r, np.ndarray)]
    if len(result) == 2 and hasattr(result[1], "keys"):  # batch-norm cache
        arrays += [np.asarray(result[1][k]) for k in result[1]]
    return arrays


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1000, 300), (257, 129), (3, 70000)])
@pytest.mark.parametrize("layer", LAYERS, ids=lambda layer: layer.name)
def test_serial_equals_parallel(layer, shape, dtype):
    if layer.family == "affine":
        shape = (shape[0], shape[1] // 3, 200)
    inputs = layer.inputs(np.random.default_rng(7), shape, dtype)
    results = {}
    for path in ("serial", "parallel"):
        with forced_path(path):
            results[path] = _arrays(layer.function("fastlayers")(*layer.call_args("fastlayers", inputs)))
    assert len(results["serial"]) == len(results["parallel"]) > 0
    for serial, parallel in zip(results["serial"], results["parallel"]):
        assert bitwise_equal(serial, parallel)


def test_forced_path_rejects_unknown():
    with pytest.raises(ValueError, match="path"):
        with forced_path("gpu"):
            pass


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(64, 100, 10), (300, 257, 7), (0, 5, 3), (7, 0, 4), (5, 6, 0)])
def test_affine_shortcut_equals_general_path(path, rng, shape, dtype):
    """Plain C-contiguous 2-D operands of one dtype skip the affine layer's
    general checks; a 3-D x and a list cache go the general way, through the
    same kernels, and must give the same bits."""
    n, d, m = shape
    x = rng.standard_normal((n, d)).astype(dtype)
    w = rng.standard_normal((d, m)).astype(dtype)
    b = rng.standard_normal(m).astype(dtype)
    dout = rng.standard_normal((n, m)).astype(dtype)
    out, cache = fl.affine_forward(x, w, b)
    general_out, _ = fl.affine_forward(x.reshape(n, 1, d), w, b)
    assert bitwise_equal(out, general_out)
    assert cache[0] is x and cache[1] is w and cache[2] is b
    gradients = fl.affine_backward(dout, cache)
    general = fl.affine_backward(dout, list(cache))
    for name, shortcut, expected in zip(("dx", "dw", "db"), gradients, general):
        assert bitwise_equal(shortcut, expected), name
