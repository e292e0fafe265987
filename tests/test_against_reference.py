"""Every function against the seed page's NumPy code: dtype x shape x layout x path."""

from __future__ import annotations

import numpy as np
import pytest

import fastlayers as fl
from fastlayers import reference as ref

from conftest import DTYPES, LAYOUTS, assert_close_to_reference, normwise_error, with_layout

AFFINE_SHAPES = [  # (x shape, M)
    ((1, 1), 1),
    ((7, 13), 5),
    ((33, 3, 4, 5), 17),  # 4-D input
    ((300, 64), 300),  # parallel-size output
    ((0, 6), 4),  # N = 0
    ((5, 0), 3),  # D = 0: out is b broadcast
    ((4, 6), 0),  # M = 0
]
ND_SHAPES = [(1, 1), (1, 9), (9, 1), (7, 13), (129, 31), (300, 257)]
RELU_SHAPES = [(), (1,), (0,), (5, 0), (7, 13), (3, 4, 5, 6), (300, 257)]


def representable(dtype, *arrays):
    """float64 arrays holding values exactly representable in ``dtype``.

    The float64 reference then computes on the very inputs the float32 code
    sees, so the comparison measures arithmetic error only.
    """
    return [a.astype(dtype).astype(np.float64) for a in arrays]


def _outputs(result):
    """A function's array outputs, whatever it returns."""
    if isinstance(result, np.ndarray):
        return (result,)
    if len(result) == 2 and not isinstance(result[1], np.ndarray):
        return (result[0],)  # (out, cache)
    return tuple(result)


def _compare(fast_result, ref64_result, ref32_result, dtype):
    for actual, exact, same in zip(_outputs(fast_result), _outputs(ref64_result), _outputs(ref32_result)):
        assert actual.shape == exact.shape
        assert_close_to_reference(actual, exact, same, dtype)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("x_shape,m", AFFINE_SHAPES)
def test_affine(path, rng, x_shape, m, dtype, layout):
    d = int(np.prod(x_shape[1:]))
    x64, w64, b64, dout64 = representable(
        dtype, rng.standard_normal(x_shape), rng.standard_normal((d, m)),
        rng.standard_normal(m), rng.standard_normal((x_shape[0], m)))
    x, w, b, dout = (with_layout(a.astype(dtype), layout) for a in (x64, w64, b64, dout64))
    originals = [a.copy() for a in (x, w, b, dout)]

    out, cache = fl.affine_forward(x, w, b)
    assert cache[0] is x and cache[1] is w and cache[2] is b
    _compare(out, ref.affine_forward(x64, w64, b64)[0],
             ref.affine_forward(x64.astype(dtype), w64.astype(dtype), b64.astype(dtype))[0], dtype)

    grads = fl.affine_backward(dout, cache)
    assert grads[0].shape == x_shape
    _compare(grads, ref.affine_backward(dout64, (x64, w64, b64)),
             ref.affine_backward(dout64.astype(dtype), (x64.astype(dtype), w64.astype(dtype), b64.astype(dtype))),
             dtype)
    for before, after in zip(originals, (x, w, b, dout)):
        np.testing.assert_array_equal(before, after)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", RELU_SHAPES)
def test_relu(path, rng, shape, dtype, layout):
    x = with_layout(rng.standard_normal(shape).astype(dtype), layout)
    dout = with_layout(rng.standard_normal(shape).astype(dtype), layout)
    out, cache = fl.relu_forward(x)
    assert cache is x
    expected = ref.relu_forward(x)[0]
    # Results come in the machine's byte order, whatever the input's.
    assert out.dtype == expected.dtype.newbyteorder("=") and out.shape == expected.shape
    np.testing.assert_array_equal(out, expected)
    dx = fl.relu_backward(dout, cache)
    np.testing.assert_array_equal(dx, ref.relu_backward(dout, x))


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", ND_SHAPES)
def test_batchnorm_train(path, rng, shape, dtype, layout):
    n, d = shape
    x64, gamma64, beta64, dout64 = representable(
        dtype, rng.standard_normal(shape) * 3.0 + 2.0, rng.standard_normal(d), rng.standard_normal(d),
        rng.standard_normal(shape))
    x, gamma, beta, dout = (with_layout(a.astype(dtype), layout) for a in (x64, gamma64, beta64, dout64))
    originals = [a.copy() for a in (x, gamma, beta, dout)]

    params, params64, params32 = {"mode": "train"}, {"mode": "train"}, {"mode": "train"}
    out, cache = fl.batchnorm_forward(x, gamma, beta, params)
    out64, cache64 = ref.batchnorm_forward(x64, gamma64, beta64, params64)
    out32, cache32 = ref.batchnorm_forward(x64.astype(dtype), gamma64.astype(dtype), beta64.astype(dtype), params32)
    _compare(out, out64, out32, dtype)
    for key in ("running_mean", "running_var"):
        _compare(params[key], params64[key], params32[key], dtype)
    for key in cache64:
        _compare(np.broadcast_to(cache[key], cache64[key].shape), cache64[key], cache32[key], dtype)

    grads = fl.batchnorm_backward(dout, cache)
    _compare(grads, ref.batchnorm_backward(dout64, cache64), ref.batchnorm_backward(dout64.astype(dtype), cache32), dtype)
    for before, after in zip(originals, (x, gamma, beta, dout)):
        np.testing.assert_array_equal(before, after)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", ND_SHAPES + [(0, 5)])
def test_batchnorm_test_mode(path, rng, shape, dtype, layout):
    n, d = shape
    x64, *arrays64 = representable(
        dtype, rng.standard_normal(shape) * 3.0 + 2.0, rng.standard_normal(d), rng.standard_normal(d),
        rng.standard_normal(d), rng.random(d) + 0.5)
    x, gamma, beta, mean, var = (with_layout(a.astype(dtype), layout) for a in [x64] + arrays64)
    params = {"mode": "test", "running_mean": mean, "running_var": var}
    out, cache = fl.batchnorm_forward(x, gamma, beta, params)
    assert cache is None
    assert params["running_mean"] is mean and params["running_var"] is var
    g64, b64, m64, v64 = arrays64
    out64, _ = ref.batchnorm_forward(x64, g64, b64, {"mode": "test", "running_mean": m64, "running_var": v64})
    cast = [a.astype(dtype) for a in arrays64]
    out32, _ = ref.batchnorm_forward(
        x64.astype(dtype), cast[0], cast[1], {"mode": "test", "running_mean": cast[2], "running_var": cast[3]}
    )
    _compare(out, out64, out32, dtype)


@pytest.mark.parametrize(
    "dtypes,expected",
    [((np.float32, np.float64, np.float32), np.float64), ((np.int64, np.float32, np.float32), np.float64),
     ((np.float32, np.float32, np.float32), np.float32), ((np.int32, np.int64, np.bool_), np.float64)],
)
def test_affine_result_dtype(rng, dtypes, expected):
    x = (rng.standard_normal((3, 4)) * 4).astype(dtypes[0])
    w = (rng.standard_normal((4, 2)) * 4).astype(dtypes[1])
    b = (rng.standard_normal(2) * 4).astype(dtypes[2])
    out, cache = fl.affine_forward(x, w, b)
    assert out.dtype == expected
    reference = ref.affine_forward(x.astype(np.float64), w.astype(np.float64), b.astype(np.float64))[0]
    assert normwise_error(out, reference) <= (1e-6 if expected == np.float32 else 1e-12)
    dx, dw, db = fl.affine_backward(np.ones((3, 2), dtypes[0]), cache)
    assert dx.dtype == dw.dtype == expected


def test_relu_integer_input_gives_float64():
    out, cache = fl.relu_forward(np.array([-3, 0, 4]))
    assert out.dtype == np.float64
    np.testing.assert_array_equal(out, [0.0, 0.0, 4.0])
    dx = fl.relu_backward(np.array([1, 2, 3]), cache)
    assert dx.dtype == np.float64
    np.testing.assert_array_equal(dx, [0.0, 2.0, 3.0])


def test_relu_backward_dtype_is_douts(rng):
    x = rng.standard_normal(10)
    dout = rng.standard_normal(10).astype(np.float32)
    dx = fl.relu_backward(dout, x)
    assert dx.dtype == np.float32
    np.testing.assert_array_equal(dx, ref.relu_backward(dout, x))
