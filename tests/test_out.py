"""Caller-supplied result arrays: ``out=`` and ``dx=``/``dw=``/... .

The rules (np.dot's strictness): exactly the result's shape and dtype,
C-contiguous, writeable, else a ValueError naming the argument; an output
that overlaps an input is computed exactly (only where the function says
so: an in-place ReLU, dx over dout) or refused, never silently wrong.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import fastlayers as fl

from conftest import DTYPES, LAYOUTS, with_layout


def _nd(rng, shape=(40, 12), dtype=np.float64):
    n, d = shape
    return {
        "x": (rng.standard_normal(shape) * 2 + 0.3).astype(dtype),
        "gamma": rng.standard_normal(d).astype(dtype),
        "beta": rng.standard_normal(d).astype(dtype),
        "dout": rng.standard_normal(shape).astype(dtype),
        "w": rng.standard_normal((d, 7)).astype(dtype),
        "b": rng.standard_normal(7).astype(dtype),
        "dout_affine": rng.standard_normal((n, 7)).astype(dtype),
    }


def _same_bits(actual, expected):
    assert actual.dtype == expected.dtype and actual.shape == expected.shape
    assert actual.tobytes() == expected.tobytes()


# One row per function: how to call it with and without supplied results.
def _calls(a):
    _, fc_cache = fl.affine_forward(a["x"], a["w"], a["b"])
    _, relu_cache = fl.relu_forward(a["x"])
    _, bn_cache = fl.batchnorm_forward(a["x"], a["gamma"], a["beta"], {"mode": "train"})
    _, arelu_cache = fl.affine_relu_forward(a["x"], a["w"], a["b"])
    ones7 = np.ones_like(a["b"])
    _, abr_cache = fl.affine_batchnorm_relu_forward(a["x"], a["w"], a["b"], ones7, a["b"], {"mode": "train"})
    return {
        "affine_forward": (lambda **o: fl.affine_forward(a["x"], a["w"], a["b"], **o), ["out"]),
        "affine_backward": (lambda **o: fl.affine_backward(a["dout_affine"], fc_cache, **o), ["dx", "dw", "db"]),
        "relu_forward": (lambda **o: fl.relu_forward(a["x"], **o), ["out"]),
        "relu_backward": (lambda **o: fl.relu_backward(a["dout"], relu_cache, **o), ["dx"]),
        "batchnorm_forward": (lambda **o: fl.batchnorm_forward(a["x"], a["gamma"], a["beta"], {"mode": "train"},
                                                               **o), ["out"]),
        "batchnorm_backward": (lambda **o: fl.batchnorm_backward(a["dout"], bn_cache, **o),
                               ["dx", "dgamma", "dbeta"]),
        "affine_relu_forward": (lambda **o: fl.affine_relu_forward(a["x"], a["w"], a["b"], **o), ["out"]),
        "affine_relu_backward": (lambda **o: fl.affine_relu_backward(a["dout_affine"], arelu_cache, **o),
                                 ["dx", "dw", "db"]),
        "affine_batchnorm_relu_forward": (
            lambda **o: fl.affine_batchnorm_relu_forward(a["x"], a["w"], a["b"], ones7, a["b"], {"mode": "train"},
                                                         **o), ["out"]),
        "affine_batchnorm_relu_backward": (lambda **o: fl.affine_batchnorm_relu_backward(a["dout_affine"], abr_cache,
                                                                                           **o),
                                           ["dx", "dw", "db", "dgamma", "dbeta"]),
    }


FUNCTIONS = list(_calls(_nd(np.random.default_rng(0), (4, 3))))


def _results(result, names):
    """The arrays a call returned, by the names of its result arguments."""
    if names == ["out"]:
        return {"out": result[0]}
    if names == ["dx"]:
        return {"dx": result}
    return dict(zip(names, result))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("function", FUNCTIONS)
def test_supplied_results_are_used_and_equal(path, rng, function, dtype):
    a = _nd(rng, (300, 257) if path == "parallel" else (40, 12), dtype)
    call, names = _calls(a)[function]
    expected = _results(call(), names)
    supplied = {name: np.full_like(expected[name], np.nan) for name in names}
    got = _results(call(**supplied), names)
    for name in names:
        assert got[name] is supplied[name]
        _same_bits(got[name], expected[name])
    # Each result on its own, the others new.
    for name in names:
        alone = np.full_like(expected[name], 7.0)
        got = _results(call(**{name: alone}), names)
        assert got[name] is alone
        _same_bits(alone, expected[name])


@pytest.mark.parametrize("function", FUNCTIONS)
def test_bad_results_are_refused_by_name(rng, function):
    a = _nd(rng)
    call, names = _calls(a)[function]
    expected = _results(call(), names)
    for name in names:
        good = expected[name]
        other = np.float32 if good.dtype == np.float64 else np.float64
        bad_cases = [
            (np.empty(good.shape + (1,), good.dtype), "shape"),
            (np.empty(good.shape, other), "dtype"),
            (with_layout(np.empty(good.shape, good.dtype), "strided") if good.ndim else None, "C-contiguous"),
            (with_layout(np.empty(good.shape, good.dtype), "readonly"), "read-only"),
        ]
        if good.ndim == 2:
            bad_cases.append((np.asfortranarray(np.empty(good.shape, good.dtype)), "C-contiguous"))
        for bad, why in bad_cases:
            if bad is None:
                continue
            with pytest.raises(ValueError, match=f"{function}: {name} .*{why}"):
                call(**{name: bad})
        for not_an_array in (good.tolist(), np.ma.masked_array(np.empty(good.shape, good.dtype))):
            with pytest.raises(TypeError, match=f"{function}: {name} must be a NumPy array"):
                call(**{name: not_an_array})


def test_in_place_relu_forward_keeps_the_gradient(path, rng):
    x = rng.standard_normal((300, 257))
    x[0, :4] = [0.0, -0.0, np.nan, -np.inf]
    dout = rng.standard_normal(x.shape)
    expected_out, cache = fl.relu_forward(x)
    expected_dx = fl.relu_backward(dout, cache)
    buffer = x.copy()
    out, mask_cache = fl.relu_forward(buffer, out=buffer)
    assert out is buffer and isinstance(mask_cache, fl.ReluMask)
    _same_bits(out, expected_out)
    _same_bits(fl.relu_backward(dout, mask_cache), expected_dx)


def test_in_place_gradients(path, rng):
    a = _nd(rng, (300, 257))
    _, relu_cache = fl.relu_forward(a["x"])
    expected = fl.relu_backward(a["dout"], relu_cache)
    buffer = a["dout"].copy()
    assert fl.relu_backward(buffer, relu_cache, dx=buffer) is buffer
    _same_bits(buffer, expected)
    x_buffer = a["x"].copy()
    _, relu_cache = fl.relu_forward(x_buffer)
    fl.relu_backward(a["dout"], relu_cache, dx=x_buffer)  # over the cached x
    _same_bits(x_buffer, expected)

    _, bn_cache = fl.batchnorm_forward(a["x"], a["gamma"], a["beta"], {"mode": "train"})
    expected_dx, expected_dgamma, expected_dbeta = fl.batchnorm_backward(a["dout"], bn_cache)
    buffer = a["dout"].copy()
    dx, dgamma, dbeta = fl.batchnorm_backward(buffer, bn_cache, dx=buffer)
    assert dx is buffer
    for got, want in ((dx, expected_dx), (dgamma, expected_dgamma), (dbeta, expected_dbeta)):
        _same_bits(got, want)
    x_buffer = a["x"].copy()
    _, bn_cache = fl.batchnorm_forward(x_buffer, a["gamma"], a["beta"], {"mode": "train"})
    dx, _, _ = fl.batchnorm_backward(a["dout"], bn_cache, dx=x_buffer)  # over the cached x
    _same_bits(dx, expected_dx)


def test_in_place_batchnorm_test_mode(path, rng):
    a = _nd(rng, (300, 257))
    params = {"mode": "test", "running_mean": a["beta"], "running_var": a["gamma"] ** 2}
    expected, _ = fl.batchnorm_forward(a["x"], a["gamma"], a["beta"], dict(params))
    buffer = a["x"].copy()
    out, cache = fl.batchnorm_forward(buffer, a["gamma"], a["beta"], dict(params), out=buffer)
    assert out is buffer and cache is None
    _same_bits(out, expected)


def test_overlaps_that_would_be_wrong_are_refused(rng):
    a = _nd(rng)
    x, dout = a["x"].copy(), a["dout"].copy()
    saved_x, saved_dout = x.copy(), dout.copy()
    with pytest.raises(ValueError, match="batchnorm_forward: out overlaps x"):
        fl.batchnorm_forward(x, a["gamma"], a["beta"], {"mode": "train"}, out=x)  # the cache keeps x
    head_of_x = np.lib.stride_tricks.as_strided(x, (40, 7), (7 * x.itemsize, x.itemsize))  # C-contiguous
    with pytest.raises(ValueError, match="affine_forward: out overlaps x"):
        fl.affine_forward(x, a["w"], a["b"], out=head_of_x)
    wide = np.zeros((40, 24))
    head_of_wide = np.lib.stride_tricks.as_strided(wide, (40, 12), (12 * wide.itemsize, wide.itemsize))
    with pytest.raises(ValueError, match="relu_forward: out overlaps x.*only exactly in place"):
        fl.relu_forward(wide[:, 1:13], out=head_of_wide)
    flat = np.zeros(41 * 12)
    shifted_in, shifted_out = flat[12:].reshape(40, 12), flat[:-12].reshape(40, 12)
    with pytest.raises(ValueError, match="relu_forward: out overlaps x"):
        fl.relu_forward(shifted_in, out=shifted_out)
    _, relu_cache = fl.relu_forward(x)
    with pytest.raises(ValueError, match="relu_backward: dx overlaps dout"):
        fl.relu_backward(shifted_in, relu_cache, dx=shifted_out)
    _, bn_cache = fl.batchnorm_forward(x, a["gamma"], a["beta"], {"mode": "train"})
    gamma = bn_cache.gamma
    with pytest.raises(ValueError, match="batchnorm_backward: dgamma overlaps cache gamma"):
        fl.batchnorm_backward(dout, bn_cache, dgamma=gamma)
    both = np.empty(24)
    with pytest.raises(ValueError, match="dgamma and dbeta share memory"):
        fl.batchnorm_backward(dout, bn_cache, dgamma=both[:12], dbeta=both[6:18])
    _, fc_cache = fl.affine_forward(x, a["w"], a["b"])
    dout_affine = a["dout_affine"]
    with pytest.raises(ValueError, match="affine_backward: dw overlaps cache w"):
        fl.affine_backward(dout_affine, fc_cache, dw=fc_cache[1])
    _, abr_cache = fl.affine_batchnorm_relu_forward(x, a["w"], a["b"], np.ones(7), a["b"], {"mode": "train"})
    with pytest.raises(ValueError, match="affine_batchnorm_relu_backward: dgamma overlaps cache w"):
        fl.affine_batchnorm_relu_backward(dout_affine, abr_cache, dgamma=fc_cache[1][0])
    np.testing.assert_array_equal(x, saved_x)
    np.testing.assert_array_equal(dout, saved_dout)


def test_allocation_free_training_step_reuses_every_buffer(rng):
    """A loop of forward and backward passes into the same arrays gives the
    same bits as allocating ones, step after step."""
    a = _nd(rng, (64, 32))
    w = a["w"]
    bufs = {
        "a": np.empty((64, 7)), "h": np.empty((64, 7)), "r": np.empty((64, 7)),
        "dr": np.empty((64, 7)), "dh": np.empty((64, 7)), "dx": np.empty((64, 32)), "dw": np.empty_like(w),
        "db": np.empty(7), "dgamma": np.empty(7), "dbeta": np.empty(7), "dbn": np.empty((64, 7)),
    }
    gamma, beta = np.ones(7), np.zeros(7)
    params_alloc, params_reuse = {"mode": "train"}, {"mode": "train"}
    for step in range(3):
        x = rng.standard_normal((64, 32))
        dout = rng.standard_normal((64, 7))
        pre, fc = fl.affine_forward(x, w, a["b"])
        h, bn = fl.batchnorm_forward(pre, gamma, beta, params_alloc)
        r, rc = fl.relu_forward(h)
        dh = fl.relu_backward(dout, rc)
        dpre, dgamma, dbeta = fl.batchnorm_backward(dh, bn)
        expected = fl.affine_backward(dpre, fc) + (dgamma, dbeta)

        pre2, fc2 = fl.affine_forward(x, w, a["b"], out=bufs["a"])
        h2, bn2 = fl.batchnorm_forward(pre2, gamma, beta, params_reuse, out=bufs["h"])
        r2, rc2 = fl.relu_forward(h2, out=h2)  # in place over the batch norm's output
        dh2 = fl.relu_backward(dout, rc2, dx=bufs["dr"])
        dpre2, dgamma2, dbeta2 = fl.batchnorm_backward(dh2, bn2, dx=dh2, dgamma=bufs["dgamma"], dbeta=bufs["dbeta"])
        got = fl.affine_backward(dpre2, fc2, dx=bufs["dx"], dw=bufs["dw"], db=bufs["db"]) + (dgamma2, dbeta2)
        _same_bits(r2, r)
        for g, e in zip(got, expected):
            _same_bits(g, e)
        assert got[0] is bufs["dx"]


@given(
    dtype=st.sampled_from(DTYPES),
    shape=st.tuples(st.integers(1, 9), st.integers(1, 9)),
    in_offset=st.integers(0, 20),
    out_offset=st.integers(0, 20),
    in_step=st.sampled_from([1, 2, -1]),
    function=st.sampled_from(["relu_forward", "relu_backward", "batchnorm_backward", "batchnorm_forward_test"]),
)
def test_overlapping_views_are_exact_or_refused(dtype, shape, in_offset, out_offset, in_step, function):
    """Any input view and output view of one buffer: the result equals the
    result computed from a copy of the input, or the call is refused."""
    rng = np.random.default_rng(in_offset * 1000 + out_offset)
    n, d = shape
    size = n * d
    buffer = rng.standard_normal(2 * size + 41).astype(dtype)
    if in_step == -1:  # reversed: element k is buffer[in_offset + size - 1 - k]
        view = buffer[in_offset: in_offset + size][::-1].reshape(n, d)
    else:
        view = buffer[in_offset: in_offset + in_step * size: in_step].reshape(n, d)
    out = buffer[out_offset: out_offset + size].reshape(n, d)
    source = view.copy()
    other = rng.standard_normal((n, d)).astype(dtype)
    gamma, beta = rng.standard_normal(d).astype(dtype), rng.standard_normal(d).astype(dtype)

    def compute(first, **result):
        if function == "relu_forward":
            return fl.relu_forward(first, **({"out": result["out"]} if result else {}))[0]
        if function == "relu_backward":
            _, cache = fl.relu_forward(other)
            return fl.relu_backward(first, cache, **({"dx": result["out"]} if result else {}))
        if function == "batchnorm_backward":
            _, cache = fl.batchnorm_forward(other, gamma, beta, {"mode": "train"})
            return fl.batchnorm_backward(first, cache, **({"dx": result["out"]} if result else {}))[0]
        params = {"mode": "test", "running_mean": beta, "running_var": gamma * gamma}
        return fl.batchnorm_forward(first, gamma, beta, params, **({"out": result["out"]} if result else {}))[0]

    expected = compute(source)
    try:
        got = compute(view, out=out)
    except ValueError as error:
        assert "overlaps" in str(error) or "C-contiguous" in str(error)
        return
    assert got is out
    _same_bits(got, expected)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_supplied_results_with_inputs_in_any_layout(path, rng, layout):
    a = _nd(rng, (300, 257))
    x = with_layout(a["x"], layout)
    expected, _ = fl.relu_forward(a["x"])
    out = np.empty_like(expected)
    fl.relu_forward(x, out=out)
    _same_bits(out, expected)
    _, cache = fl.relu_forward(x)
    expected_dx = fl.relu_backward(a["dout"], fl.relu_forward(a["x"])[1])
    dx = np.empty_like(expected_dx)
    fl.relu_backward(with_layout(a["dout"], layout), cache, dx=dx)
    _same_bits(dx, expected_dx)
