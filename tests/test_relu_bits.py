"""ReLU forward and backward are bitwise equal to the seed page's."""

from __future__ import annotations

import numpy as np
import pytest

import fastlayers as fl
from fastlayers import reference as ref

from conftest import DTYPES, bitwise_equal

SPECIAL = [np.nan, -np.nan, np.inf, -np.inf, 0.0, -0.0, 1.0, -1.0, 1e-45, -1e-45, 3e38, -3e38]


@pytest.mark.parametrize("dtype", DTYPES)
def test_special_values_bitwise(path, dtype):
    values = np.array(SPECIAL, dtype=dtype)
    # Every pairing of a dout value with an x value.
    x = np.repeat(values, len(values))
    dout = np.tile(values, len(values))
    out, cache = fl.relu_forward(x)
    assert bitwise_equal(out, ref.relu_forward(x)[0])
    with np.errstate(invalid="ignore"):  # NumPy warns of Inf * 0
        expected = ref.relu_backward(dout, x)
    assert bitwise_equal(fl.relu_backward(dout, cache), expected)


@pytest.mark.parametrize("dtype", DTYPES)
def test_large_random_with_specials_bitwise(path, rng, dtype):
    x = rng.standard_normal(100_003).astype(dtype)
    dout = rng.standard_normal(100_003).astype(dtype)
    for array in (x, dout):
        spots = rng.integers(0, array.size, 500)
        array[spots] = rng.choice(np.array(SPECIAL, dtype=dtype), 500)
    x[::97] = 0.0
    out, cache = fl.relu_forward(x)
    assert bitwise_equal(out, ref.relu_forward(x)[0])
    with np.errstate(invalid="ignore"):  # NumPy warns of Inf * 0
        expected = ref.relu_backward(dout, x)
    assert bitwise_equal(fl.relu_backward(dout, cache), expected)


def test_documented_zero_cases():
    out, cache = fl.relu_forward(np.array([-0.0, -1.0]))
    assert np.signbit(out[0]) and out[0] == 0  # -0.0 passes through
    assert not np.signbit(out[1])  # negatives become +0.0
    dx = fl.relu_backward(np.array([-1.0, np.inf]), np.array([-1.0, -1.0]))
    assert np.signbit(dx[0]) and dx[0] == 0  # -1 * False = -0.0
    assert np.isnan(dx[1])  # Inf * False = NaN
