"""Hostile input for all ten functions (the six layers and the four
sandwiches), with and without caller-supplied result arrays, driven by
hypothesis.

Run in a subprocess by tests/test_hostile.py, so that a crash (a segfault
from an out-of-bounds read, an abort) fails that test instead of killing
the test run. Every call must either return float arrays of the reference's
shapes (ReLU: the reference's values, bit for bit) or raise ValueError,
TypeError or KeyError with a message that starts with the function's name;
the caller's arrays and bn_param must come back unmodified (a supplied
result array excepted, when the call returns: that is its purpose).

Prints the number of cases run and how many returned / raised.
"""

from __future__ import annotations

import collections
import hashlib
import os
import sys
import warnings

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import fastlayers as fl
from fastlayers import reference as ref

DOCUMENTED = (ValueError, TypeError, KeyError)
tally: collections.Counter = collections.Counter()

FLOAT_VALUES = {
    np.float32: st.floats(width=32, allow_nan=True, allow_infinity=True),
    np.float64: st.one_of(st.floats(allow_nan=True, allow_infinity=True),
                          st.sampled_from([1e308, -1e308, 5e-324, 1e-300, 1e300])),
}
DTYPES = [np.float32, np.float64, np.int64, np.bool_, np.float16, np.complex128, np.longdouble]
shapes = hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=5)


def elements_for(dtype):
    if dtype in FLOAT_VALUES:
        return FLOAT_VALUES[dtype]
    return None  # hypothesis's default elements for that dtype


@st.composite
def arrays(draw, shape=None, dtypes=DTYPES):
    dtype = draw(st.sampled_from(dtypes))
    shape = draw(shapes) if shape is None else shape
    array = draw(hnp.arrays(dtype, shape, elements=elements_for(dtype)))
    layout = draw(st.sampled_from(["C", "F", "reversed", "strided", "readonly", "broadcast", "list", "byteswapped"]))
    if layout == "byteswapped":  # the other endianness: numba reads only the machine's
        return array.astype(array.dtype.newbyteorder("S"))
    if layout == "F":
        return np.asfortranarray(array)
    if layout == "reversed" and array.ndim:
        return array[::-1]
    if layout == "strided" and array.ndim:
        wide = np.zeros(array.shape[:-1] + (2 * array.shape[-1],), array.dtype)
        wide[..., ::2] = array
        return wide[..., ::2]
    if layout == "readonly":
        array.setflags(write=False)
    if layout == "broadcast" and array.ndim and array.shape[0] > 0:
        # Overlapping memory: every row is the same row.
        return np.broadcast_to(array[:1], array.shape)
    if layout == "list" and array.dtype.kind in "fib" and array.size < 50:
        return array.tolist()
    return array


float_arrays = st.sampled_from([np.float32, np.float64])


@st.composite
def affine_args(draw):
    if draw(st.booleans()):  # consistent shapes, hostile values
        n, d, m = (draw(st.integers(0, 6)) for _ in range(3))
        x = draw(arrays(shape=(n, d), dtypes=[np.float32, np.float64]))
        w = draw(arrays(shape=(d, m), dtypes=[np.float32, np.float64]))
        b = draw(arrays(shape=(m,), dtypes=[np.float32, np.float64]))
        return x, w, b
    return draw(arrays()), draw(arrays()), draw(arrays())


@st.composite
def bn_params(draw, d):
    param: dict = {}
    mode = draw(st.sampled_from(["train", "test", "train", "eval", None, 3, ["train"], np.array(["train"]), "missing"]))
    if mode != "missing":
        param["mode"] = mode
    if draw(st.booleans()):
        param["eps"] = draw(st.sampled_from([1e-5, 0.0, -1.0, "big", None, np.float32(1e-3), [1e-5]]))
    if draw(st.booleans()):
        param["momentum"] = draw(st.sampled_from([0.9, 0.0, 1.0, 2.0, None, "x"]))
    for key in ("running_mean", "running_var"):
        if draw(st.booleans()):
            param[key] = draw(st.one_of(arrays(shape=(d,)), arrays()))
    return param


@st.composite
def bn_args(draw):
    if draw(st.booleans()):
        n, d = draw(st.integers(0, 6)), draw(st.integers(0, 6))
        x = draw(arrays(shape=(n, d), dtypes=[np.float32, np.float64]))
        gamma = draw(arrays(shape=(d,), dtypes=[np.float32, np.float64]))
        beta = draw(arrays(shape=(d,), dtypes=[np.float32, np.float64]))
        return x, gamma, beta, draw(bn_params(d))
    x = draw(arrays())
    d = np.shape(x)[1] if np.ndim(x) == 2 else 3
    return x, draw(arrays()), draw(arrays()), draw(st.one_of(bn_params(d), st.sampled_from([None, "train", []])))


def _replacement(draw, array):
    """Another array for a cache part: often of the same shape (so that only
    its dtype, byte order or layout is wrong), else of any shape."""
    return draw(st.one_of(arrays(shape=np.shape(array)), arrays()))


def foreign_caches(draw, kind):
    """(cache, its forward output's shape) for a cache that is not the one
    the backward's forward returned: another layer's, a foreign object, or
    (every kind but "affine") a real cache with one part replaced."""
    choices = [None, (), {"x": 1}, "cache", np.ones(3), (np.ones(3), np.ones(3)),
               ref.batchnorm_forward(np.ones((4, 3)), np.ones(3), np.zeros(3), {"mode": "train"})[1],
               (np.ones((4, 3)), np.ones((3, 2)), np.ones(2))]
    tampered = None
    dtype = draw(float_arrays)  # a float32 cache's part replaced by a float64 one widens the computation
    x, w = np.arange(12, dtype=dtype).reshape(4, 3), np.linspace(-1, 1, 6, dtype=dtype).reshape(3, 2)
    b = np.zeros(2, dtype)
    if kind == "bn":
        cache = fl.batchnorm_forward(x, np.ones(3, dtype), np.zeros(3, dtype), {"mode": "train"})[1]
        attribute = draw(st.sampled_from(["mean", "var", "gamma", "beta", "x"]))
        setattr(cache, attribute, _replacement(draw, getattr(cache, attribute)))
        tampered = cache
    if kind == "relu":  # an in-place forward's mask
        in_place = x.copy()
        mask = fl.relu_forward(in_place, out=in_place)[1]
        mask.mask = _replacement(draw, mask.mask)
        tampered = mask
    if kind in ("affine_relu", "affine_batchnorm_relu"):
        extra = (np.ones(2, dtype), np.zeros(2, dtype), {"mode": "train"}) if kind == "affine_batchnorm_relu" else ()
        fc_cache, second = getattr(fl, f"{kind}_forward")(x, w, b, *extra)[1]
        part = draw(st.integers(0, 3))
        if part < 3:  # x, w or b of the affine part
            fc_cache = tuple(_replacement(draw, a) if i == part else a for i, a in enumerate(fc_cache))
        elif kind == "affine_relu":
            second.mask = _replacement(draw, second.mask)
        else:
            attribute = draw(st.sampled_from(["mean", "var", "gamma", "beta", "x"]))
            setattr(second, attribute, _replacement(draw, getattr(second, attribute)))
        tampered = (fc_cache, second)
    if tampered is not None and draw(st.booleans()):
        return tampered, (x.shape[0], w.shape[1]) if kind.startswith("affine") else x.shape
    return draw(st.sampled_from(choices)), x.shape


def fingerprint(value) -> bytes:
    digest = hashlib.sha256()

    def add(item):
        if isinstance(item, np.ndarray):
            digest.update(repr((item.dtype.str, item.shape, item.strides)).encode())
            if item.dtype != object:
                digest.update(np.ascontiguousarray(item).tobytes())
        elif isinstance(item, dict):
            for key in sorted(item, key=str):
                digest.update(repr(key).encode())
                add(item[key])
        elif isinstance(item, (list, tuple)):
            for element in item:
                add(element)
        else:
            digest.update(repr(item).encode())

    add(value)
    return digest.digest()


def _arrays(name, result) -> list:
    """The computed arrays of a call (a forward's cache left out)."""
    if name == "relu_backward":
        return [np.asarray(result)]
    if name.endswith("_forward"):
        return [np.asarray(result[0])]
    return [np.asarray(r) for r in result]


def check(name, args, results=None):
    tally["cases"] += 1
    results = results or {}
    tally["with supplied results"] += bool(results)
    # What the caller holds: the arguments, and the values bn_param held
    # (batchnorm_forward may rebind bn_param's entries, never modify them).
    held = [a for a in args if not isinstance(a, dict)] + [list(a.values()) for a in args if isinstance(a, dict)]
    held_before = [fingerprint(h) for h in held]
    dicts_before = fingerprint([a for a in args if isinstance(a, dict)])
    results_before = fingerprint(list(results.values()))
    # The reference gets the arguments as the call received them: a result
    # array may be one of them (dx=x, over a ReLU's cache), and the call writes it.
    args_before = [a.copy(order="K") if isinstance(a, np.ndarray) else a for a in args]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # fastlayers itself stays silent
            result = getattr(fl, name)(*args, **results)
    except DOCUMENTED as exc:
        message = str(exc).strip("'\"")
        assert message.startswith(name), f"{name}: {type(exc).__name__} without the function's name: {message}"
        assert "numba" not in message.lower(), message
        tally["raised"] += 1
        assert [fingerprint(h) for h in held] == held_before, f"{name} modified its arguments before raising"
        assert fingerprint(list(results.values())) == results_before, f"{name} wrote a result array, then raised"
        assert fingerprint([a for a in args if isinstance(a, dict)]) == dicts_before, f"{name} changed bn_param"
        return
    tally["returned"] += 1
    outputs = _arrays(name, result)
    if results:  # an accepted result array is returned and written, nothing else is
        assert all(any(o is r for o in outputs) for r in results.values()), name
        tally["returned with supplied results"] += 1

    def written(item):  # an argument that is (or shares memory with) an accepted result array
        return isinstance(item, np.ndarray) and any(np.may_share_memory(item, r) for r in results.values())

    assert [fingerprint(h) for h in held if not written(h)] == [
        before for h, before in zip(held, held_before) if not written(h)
    ], f"{name} modified an argument or an array bn_param held"
    for output in outputs:
        assert output.dtype in (np.float32, np.float64), output.dtype
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        # The documented conversion: integer and bool inputs become float64 first.
        reference_args = [np.asarray(a) if isinstance(a, (list, bool, int, float)) else a for a in args_before]
        reference_args = [a.astype(np.float64) if isinstance(a, np.ndarray) and a.dtype.kind in "iub" else a
                          for a in reference_args]
        try:
            expected = getattr(ref, name)(*reference_args)
        except Exception:
            tally["reference raised, we returned"] += 1
            return
    expected_outputs = _arrays(name, expected)
    for ours, theirs in zip(outputs, expected_outputs):
        assert ours.shape == np.shape(theirs), (name, ours.shape, np.shape(theirs))
        if name.startswith("relu"):
            # Bit for bit, in the machine's byte order: ours always is (documented), while the
            # seed's x.copy() keeps a byteswapped x's order.
            native = theirs.dtype.newbyteorder("=")
            assert ours.dtype == native, (name, ours.dtype, native)
            assert ours.tobytes() == np.ascontiguousarray(theirs, dtype=native).tobytes(), name


SANDWICHES = ["affine_relu_forward", "affine_relu_backward", "affine_batchnorm_relu_forward",
              "affine_batchnorm_relu_backward"]
RESULT_NAMES = {"affine_backward": ["dx", "dw", "db"], "relu_backward": ["dx"],
                "batchnorm_backward": ["dx", "dgamma", "dbeta"], "affine_relu_backward": ["dx", "dw", "db"],
                "affine_batchnorm_relu_backward": ["dx", "dw", "db", "dgamma", "dbeta"]}


@st.composite
def layer_call(draw, name):
    if name in ("affine_forward", "affine_relu_forward"):
        return draw(affine_args())
    if name == "relu_forward":
        return (draw(arrays()),)
    if name == "batchnorm_forward":
        return draw(bn_args())
    if name == "affine_batchnorm_relu_forward":
        x, w, b = draw(affine_args())
        m = np.shape(w)[1] if np.ndim(w) == 2 else 2
        gamma, beta = (draw(st.one_of(arrays(shape=(m,), dtypes=[np.float32, np.float64]), arrays()))
                       for _ in range(2))
        return x, w, b, gamma, beta, draw(st.one_of(bn_params(m), st.sampled_from([None, "train"])))
    if name == "relu_backward":
        x = draw(arrays())
        cache, shape = (x, np.shape(x)) if draw(st.booleans()) else foreign_caches(draw, "relu")
    elif name in ("affine_backward", "affine_relu_backward", "affine_batchnorm_relu_backward"):
        forward = name.replace("backward", "forward")
        x, w, b = draw(affine_args())
        width = np.shape(w)[-1] if np.ndim(w) else 1
        extra = (np.ones(width), np.zeros(width), {"mode": "train"}) if "batchnorm" in name else ()
        try:
            cache = getattr(fl, forward)(x, w, b, *extra)[1]
            shape = (np.shape(x)[0], np.shape(w)[1])
        except DOCUMENTED:
            cache, shape = (x, w, b), (2, 2)
        if draw(st.booleans()):
            cache, shape = foreign_caches(draw, forward[:-len("_forward")])
    else:
        x, gamma, beta, _ = draw(bn_args())
        try:
            cache = fl.batchnorm_forward(x, gamma, beta, {"mode": "train"})[1]
            shape = cache.x.shape
        except DOCUMENTED:
            cache, shape = None, (2, 2)
        if draw(st.booleans()):
            cache, shape = foreign_caches(draw, "bn")
    # dout: often of the shape the cache's forward output had, and a float
    dout = draw(st.one_of(arrays(shape=shape, dtypes=[np.float32, np.float64]), arrays(shape=shape), arrays()))
    return dout, cache


@st.composite
def result_arrays(draw, name, args):
    """Caller-supplied result arrays: right, wrong, or aliasing an input."""
    names = RESULT_NAMES.get(name, ["out"])
    chosen = draw(st.lists(st.sampled_from(names), unique=True, max_size=len(names)))
    inputs = [a for a in args if isinstance(a, np.ndarray)]
    results = {}
    for result in chosen:
        results[result] = draw(st.one_of(
            arrays(dtypes=[np.float32, np.float64]),  # often the wrong shape or layout
            st.builds(lambda: np.empty(np.shape(inputs[0]) if inputs else (2, 2))),
            st.sampled_from(inputs) if inputs else st.just(np.empty(3)),  # aliasing an input
            st.just([1.0, 2.0]),
        ))
    return results


@st.composite
def calls(draw):
    name = draw(st.sampled_from(["affine_forward", "affine_backward", "relu_forward", "relu_backward",
                                 "batchnorm_forward", "batchnorm_backward", *SANDWICHES]))
    args = draw(layer_call(name))
    results = draw(result_arrays(name, args)) if draw(st.integers(0, 3)) == 0 else {}
    return name, args, results


def main(examples: int) -> None:
    # As conftest's profiles: under CI the same examples every run, so that a red CI can be reproduced.
    @settings(max_examples=examples, deadline=None, database=None, derandomize=bool(os.environ.get("CI")),
              suppress_health_check=list(HealthCheck))
    @given(calls())
    def hostile(call):
        name, args, results = call
        check(name, args, results)

    hostile()
    print(" ".join(f"{key.replace(' ', '_')}={value}" for key, value in sorted(tally.items())))


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 500)
