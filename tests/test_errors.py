"""Every bad input is a clear Python exception naming the argument."""

from __future__ import annotations

import numpy as np
import pytest

import fastlayers as fl
from fastlayers import reference as ref

X = np.ones((4, 3))
W = np.ones((3, 2))
B = np.ones(2)
GAMMA = np.ones(3)


def _affine_cache():
    return fl.affine_forward(X, W, B)[1]


def _bn_cache():
    return fl.batchnorm_forward(X, GAMMA, GAMMA, {"mode": "train"})[1]


def _tampered_bn_cache():
    cache = _bn_cache()
    cache.mean = np.zeros(1000)  # would be read out of bounds by the kernel
    return cache


CASES = {
    # affine_forward
    "affine x 0-d": (lambda: fl.affine_forward(np.float64(1.0), W, B), ValueError, "x"),
    "affine w 1-D": (lambda: fl.affine_forward(X, np.ones(3), B), ValueError, "w"),
    "affine w rows != D": (lambda: fl.affine_forward(X, np.ones((4, 2)), B), ValueError, "w has shape (4, 2)"),
    "affine b != M": (lambda: fl.affine_forward(X, W, np.ones(3)), ValueError, "b has shape (3,)"),
    "affine b 2-D": (lambda: fl.affine_forward(X, W, np.ones((1, 2))), ValueError, "b has shape (1, 2)"),
    "affine x float16": (lambda: fl.affine_forward(X.astype(np.float16), W, B), TypeError, "x has dtype float16"),
    "affine w complex": (lambda: fl.affine_forward(X, W.astype(complex), B), TypeError, "w has dtype complex128"),
    "affine b object": (lambda: fl.affine_forward(X, W, np.array([1, None], dtype=object)), TypeError, "b has dtype object"),
    "affine x str": (lambda: fl.affine_forward(np.array([["a"]]), W, B), TypeError, "x has dtype <U1"),
    "affine x longdouble": (lambda: fl.affine_forward(X.astype(np.longdouble), W, B), TypeError, "x has dtype"),
    "affine x ragged": (lambda: fl.affine_forward([[1.0], [1.0, 2.0]], W, B), TypeError, "x cannot be read"),
    # Dimensions past BLAS's 32-bit limit, in arrays of zero stride (no memory).
    "affine D > BLAS limit": (lambda: fl.affine_forward(np.broadcast_to(1.0, (2, 2**31)), np.broadcast_to(1.0, (2**31, 2)), B),
                              ValueError, "dimension D=2147483648 exceeds the BLAS limit"),
    "affine M > BLAS limit": (lambda: fl.affine_forward(X, np.broadcast_to(1.0, (3, 2**31)), np.broadcast_to(1.0, 2**31)),
                              ValueError, "dimension M=2147483648"),
    "affine N > BLAS limit": (lambda: fl.affine_forward(np.broadcast_to(1.0, (2**31, 3)), W, B),
                              ValueError, "dimension N=2147483648"),
    # affine_backward
    "affine dout shape": (lambda: fl.affine_backward(np.ones((4, 3)), _affine_cache()), ValueError, "dout has shape (4, 3)"),
    "affine cache foreign": (lambda: fl.affine_backward(np.ones((4, 2)), {"x": X}), ValueError, "cache must be the (x, w, b)"),
    "affine cache short": (lambda: fl.affine_backward(np.ones((4, 2)), (X, W)), ValueError, "cache"),
    "affine cache tampered": (lambda: fl.affine_backward(np.ones((4, 2)), (X, np.ones((5, 2)), B)), ValueError, "w has shape (5, 2)"),
    "affine dout complex": (lambda: fl.affine_backward(np.ones((4, 2), complex), _affine_cache()), TypeError, "dout"),
    # relu
    "relu x complex": (lambda: fl.relu_forward(np.ones(3, complex)), TypeError, "x has dtype complex128"),
    "relu x float16": (lambda: fl.relu_forward(np.ones(3, np.float16)), TypeError, "x has dtype float16"),
    "relu dout shape": (lambda: fl.relu_backward(np.ones(4), np.ones(3)), ValueError, "dout has shape (4,)"),
    "relu cache foreign": (lambda: fl.relu_backward(np.ones(3), _bn_cache()), TypeError, "cache"),
    "relu x masked": (lambda: fl.relu_forward(np.ma.masked_less(np.arange(-2.0, 2.0), 0)), TypeError,
                      "x is a masked array"),
    "bn gamma masked": (lambda: fl.batchnorm_forward(X, np.ma.masked_array(GAMMA), GAMMA, {"mode": "train"}),
                        TypeError, "gamma is a masked array"),
    "relu dout str": (lambda: fl.relu_backward(np.array(["a", "b"]), np.ones(2)), TypeError, "dout has dtype <U1"),
    # batchnorm_forward
    "bn mode missing": (lambda: fl.batchnorm_forward(X, GAMMA, GAMMA, {}), KeyError, "bn_param['mode']"),
    "bn mode unknown": (lambda: fl.batchnorm_forward(X, GAMMA, GAMMA, {"mode": "eval"}), ValueError, "eval"),
    "bn bn_param not dict": (lambda: fl.batchnorm_forward(X, GAMMA, GAMMA, "train"), TypeError, "bn_param must be a dict"),
    "bn x 3-D": (lambda: fl.batchnorm_forward(np.ones((2, 3, 1)), GAMMA, GAMMA, {"mode": "train"}), ValueError, "x must be 2-D"),
    "bn x 1-D": (lambda: fl.batchnorm_forward(np.ones(3), GAMMA, GAMMA, {"mode": "train"}), ValueError, "x must be 2-D"),
    "bn gamma shape": (lambda: fl.batchnorm_forward(X, np.ones(4), GAMMA, {"mode": "train"}), ValueError, "gamma has shape (4,)"),
    "bn beta shape": (lambda: fl.batchnorm_forward(X, GAMMA, np.ones((3, 1)), {"mode": "test"}), ValueError, "beta has shape (3, 1)"),
    "bn train N=0": (lambda: fl.batchnorm_forward(np.ones((0, 3)), GAMMA, GAMMA, {"mode": "train"}), ValueError, "N >= 1"),
    "bn x float16": (lambda: fl.batchnorm_forward(X.astype(np.float16), GAMMA, GAMMA, {"mode": "train"}), TypeError, "x has dtype float16"),
    "bn running_mean shape": (
        lambda: fl.batchnorm_forward(X, GAMMA, GAMMA, {"mode": "train", "running_mean": np.ones(5)}),
        ValueError, "bn_param['running_mean'] has shape (5,)"),
    "bn running_var dtype": (
        lambda: fl.batchnorm_forward(X, GAMMA, GAMMA, {"mode": "test", "running_var": np.ones(3, complex)}),
        TypeError, "bn_param['running_var']"),
    "bn eps not number": (lambda: fl.batchnorm_forward(X, GAMMA, GAMMA, {"mode": "train", "eps": "big"}), TypeError, "bn_param['eps']"),
    "bn momentum not number": (
        lambda: fl.batchnorm_forward(X, GAMMA, GAMMA, {"mode": "train", "momentum": None}), TypeError, "bn_param['momentum']"),
    # batchnorm_backward
    "bn dout shape": (lambda: fl.batchnorm_backward(np.ones((4, 2)), _bn_cache()), ValueError, "dout has shape (4, 2)"),
    "bn cache foreign dict": (
        lambda: fl.batchnorm_backward(X, ref.batchnorm_forward(X, GAMMA, GAMMA, {"mode": "train"})[1]),
        ValueError, "cache must be the cache returned by fastlayers.batchnorm_forward"),
    "bn cache None (test mode)": (lambda: fl.batchnorm_backward(X, None), ValueError, "cache"),
    "bn cache tampered": (lambda: fl.batchnorm_backward(X, _tampered_bn_cache()), ValueError, "cache is a BatchNormCache"),
    "bn dout complex": (lambda: fl.batchnorm_backward(X.astype(complex), _bn_cache()), TypeError, "dout has dtype complex128"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_raises_clear_error(case):
    call, exception, fragment = CASES[case]
    with pytest.raises(exception) as info:
        call()
    message = str(info.value)
    assert fragment in message
    assert "numba" not in message.lower()
    assert message.split(":")[0].strip("'\"").endswith(("forward", "backward"))


def test_failed_forward_leaves_bn_param_alone():
    params = {"mode": "train", "running_mean": np.ones(3), "running_var": np.ones(5)}
    before = dict(params)
    with pytest.raises(ValueError):
        fl.batchnorm_forward(X, GAMMA, GAMMA, params)
    assert params == before


@pytest.mark.parametrize("attribute", ["x", "mean", "var", "gamma", "beta"])
@pytest.mark.parametrize("backward", ["batchnorm_backward", "affine_batchnorm_relu_backward"])
def test_bn_cache_array_in_the_other_byte_order_is_refused(backward, attribute):
    """numba types only the machine's byte order (the other one is a typing
    error inside numba): a cache array replaced by its byteswapped copy,
    same values and shape, is refused like any other altered cache."""
    forward = getattr(fl, backward.replace("backward", "forward"))
    args = (X, GAMMA, GAMMA) if backward == "batchnorm_backward" else (X, W, B, B, B)
    out, cache = forward(*args, {"mode": "train"})
    bn_cache = cache if backward == "batchnorm_backward" else cache[1]
    array = getattr(bn_cache, attribute)
    setattr(bn_cache, attribute, array.astype(array.dtype.newbyteorder("S")))
    with pytest.raises(ValueError, match=f"^{backward}: cache is a BatchNormCache whose contents were altered"):
        getattr(fl, backward)(np.ones_like(out), cache)
