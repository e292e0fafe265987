"""Hypothesis: random shapes and values, fastlayers against the reference."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import fastlayers as fl
from fastlayers import reference as ref

from fastlayers._kernels._twins import forced_path

from conftest import PATHS, bitwise_equal

# Hypothesis and function-scoped fixtures do not mix, so each test takes the
# kernel path as a parameter and forces it inside.
over_paths = pytest.mark.parametrize("kernel_path", PATHS)

dims = st.integers(min_value=1, max_value=40)
values = st.floats(min_value=-1e3, max_value=1e3, allow_nan=False, width=64)
dtypes = st.sampled_from([np.float32, np.float64])


def _array(draw, shape, dtype):
    return draw(hnp.arrays(np.float64, shape, elements=values)).astype(dtype)


def _assert_close(ours, theirs, dtype, scale: float = 0.0, slack: float = 1.0) -> None:
    """max|ours - theirs| <= tol * max(max|theirs|, scale), the scale floored at
    the dtype's smallest normal number (subnormal results carry no precision)."""
    tolerance = _tolerance(dtype)
    theirs = np.asarray(theirs, dtype=np.float64)
    if theirs.size == 0:
        return
    error = float(np.max(np.abs(np.asarray(ours, dtype=np.float64) - theirs)))
    floor = float(np.finfo(dtype).tiny) / tolerance
    assert error <= tolerance * slack * max(float(np.max(np.abs(theirs))), scale, floor)


def _tolerance(dtype) -> float:
    # Random data can be badly conditioned (a feature with near-equal
    # values); these bounds are loose on purpose, the tight ones live in
    # test_against_reference.py on well-conditioned data.
    return 1e-10 if dtype == np.float64 else 1e-3


@over_paths
@given(st.data(), dims, dims, dims, dtypes)
def test_affine_property(kernel_path, data, n, d, m, dtype):
    with forced_path(kernel_path):
        _test_affine_property(data, n, d, m, dtype)


def _test_affine_property(data, n, d, m, dtype):
    x = _array(data.draw, (n, d), dtype)
    w = _array(data.draw, (d, m), dtype)
    b = _array(data.draw, (m,), dtype)
    dout = _array(data.draw, (n, m), dtype)
    out, cache = fl.affine_forward(x, w, b)
    _assert_close(out, ref.affine_forward(x, w, b)[0], dtype)
    for ours, theirs in zip(fl.affine_backward(dout, cache), ref.affine_backward(dout, (x, w, b))):
        _assert_close(ours, theirs, dtype)


@over_paths
@given(st.data(), hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=9), dtypes)
def test_relu_property(kernel_path, data, shape, dtype):
    with forced_path(kernel_path):
        _test_relu_property(data, shape, dtype)


def _test_relu_property(data, shape, dtype):
    elements = st.floats(allow_nan=True, allow_infinity=True, width=32)
    x = data.draw(hnp.arrays(dtype, shape, elements=elements))
    dout = data.draw(hnp.arrays(dtype, shape, elements=elements))
    out, cache = fl.relu_forward(x)
    assert bitwise_equal(out, ref.relu_forward(x)[0])
    with np.errstate(invalid="ignore"):
        expected = ref.relu_backward(dout, x)
    assert bitwise_equal(fl.relu_backward(dout, cache), expected)


@over_paths
@given(st.data(), dims, dims, dtypes)
def test_batchnorm_property(kernel_path, data, n, d, dtype):
    with forced_path(kernel_path):
        _test_batchnorm_property(data, n, d, dtype)


def _test_batchnorm_property(data, n, d, dtype):
    x = _array(data.draw, (n, d), dtype)
    gamma = _array(data.draw, (d,), dtype)
    beta = _array(data.draw, (d,), dtype)
    dout = _array(data.draw, (n, d), dtype)
    params, params_ref = {"mode": "train"}, {"mode": "train"}
    out, cache = fl.batchnorm_forward(x, gamma, beta, params)
    # The float64 seed computation on the same inputs is the yardstick.
    x64, gamma64, beta64, dout64 = (a.astype(np.float64) for a in (x, gamma, beta, dout))
    out_ref, cache_ref = ref.batchnorm_forward(x64, gamma64, beta64, params_ref)
    # On a near-constant feature x - mean cancels to rounding residue, which
    # the normalise scales by ivar (a constant column of 9 values: the
    # reference gave -1.8e-11 where the exact output, and ours, is 0):
    # measure against the size of the terms that cancel.
    ivar = float(np.max(cache_ref["ivar"]))
    _assert_close(out, out_ref, dtype, scale=float(np.max(np.abs(x64))) * float(np.max(np.abs(gamma64))) * ivar)
    # A near-constant feature has a variance made of rounding residue: measure
    # against the size of the squares that cancel.
    _assert_close(params["running_var"], params_ref["running_var"], dtype, scale=float(np.max(np.abs(x64))) ** 2)
    grads_ref = ref.batchnorm_backward(dout64, cache_ref)
    # Where the exact gradient cancels to ~0 (a constant feature, say) the
    # reference keeps rounding residue (1e-181 seen) and we may give exact 0:
    # measure against the size of the terms that cancel, not the result.
    term = n * float(np.max(np.abs(dout64))) * max(1.0, float(np.max(np.abs(gamma64)))) * ivar
    for ours, theirs in zip(fl.batchnorm_backward(dout, cache), grads_ref):
        _assert_close(ours, theirs, dtype, scale=term, slack=max(1.0, ivar))
    test_params = {"mode": "test", "running_mean": params["running_mean"], "running_var": params["running_var"] + 1}
    test_ref = {"mode": "test", "running_mean": params_ref["running_mean"], "running_var": params_ref["running_var"] + 1}
    out_test, _ = fl.batchnorm_forward(x, gamma, beta, test_params)
    out_test_ref, _ = ref.batchnorm_forward(x64, gamma64, beta64, test_ref)
    _assert_close(out_test, out_test_ref, dtype)
