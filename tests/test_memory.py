"""Fresh large outputs are 64-byte aligned and apart from their inputs
within a page (``fastlayers._memory``); small ones are plain arrays."""

from __future__ import annotations

from itertools import pairwise

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import fastlayers as fl
from fastlayers import reference
from fastlayers._memory import (
    APART_MIN_BYTES,
    LINE_BYTES,
    PAGE_BYTES,
    empty_apart,
    page_offset_apart,
    start_apart,
)

from conftest import DTYPES

# Rows of 4096 elements: each row starts at the same page offset, the case
# where an output at its input's offset is slowest.
LARGE = (64, 4096)


def page_offset(array: np.ndarray) -> int:
    return array.ctypes.data % PAGE_BYTES


def circular_distance(a: int, b: int) -> int:
    return min((a - b) % PAGE_BYTES, (b - a) % PAGE_BYTES)


def at_page_offset(shape: tuple[int, ...], dtype, offset: int, rng: np.random.Generator) -> np.ndarray:
    """A C-contiguous array of normal values whose data starts at ``offset`` within a page."""
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape)) * dtype.itemsize
    buffer = np.empty(nbytes + 2 * PAGE_BYTES, np.uint8)
    start = (offset - page_offset(buffer)) % PAGE_BYTES
    array = buffer[start:start + nbytes].view(dtype).reshape(shape)
    array[...] = rng.standard_normal(shape)
    assert page_offset(array) == offset
    return array


@pytest.mark.parametrize(("offsets", "expected"), [
    ([16, 16], 2048),  # one gap, the whole page round from 16: its middle, 2064, down to a line
    ([0, 2048], 1024),  # two equal gaps: the first
    ([4000, 100], 2048),  # the gap from 100 to 4000
    ([3000, 3100], 960),  # the gap from 3100 round to 3000: middle 5098, 1002 within the page, down to a line
    ([0, 1024, 3072], 2048),  # the gap from 1024 to 3072
])
def test_page_offset_apart_takes_the_middle_of_the_widest_gap(offsets, expected):
    assert page_offset_apart(np.array(offsets, dtype=np.int64)) == expected


@given(st.lists(st.integers(0, PAGE_BYTES - 1), min_size=1, max_size=5))
def test_page_offset_apart_is_a_line_as_far_from_every_offset_as_lines_allow(offsets):
    chosen = page_offset_apart(np.array(offsets, dtype=np.int64))
    assert 0 <= chosen < PAGE_BYTES and chosen % LINE_BYTES == 0
    ordered = sorted(offsets)
    widest = max([b - a for a, b in pairwise(ordered)] + [ordered[0] + PAGE_BYTES - ordered[-1]])
    # The middle of the widest gap is widest / 2 from its ends; rounding to a line moves it less than a line.
    assert min(circular_distance(chosen, offset) for offset in offsets) > widest // 2 - LINE_BYTES


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("first_offset", "second_offset"), [(16, 16), (16, 48), (0, 2048), (2000, 3504)])
def test_empty_apart_places_a_large_output_away_from_both_inputs(rng, dtype, first_offset, second_offset):
    first = at_page_offset(LARGE, dtype, first_offset, rng)
    second = at_page_offset(LARGE, dtype, second_offset, rng)
    out = empty_apart(LARGE, np.dtype(dtype), first, second)
    assert out.shape == LARGE and out.dtype == dtype
    assert out.flags.c_contiguous and out.flags.writeable and out.flags.aligned
    assert page_offset(out) % LINE_BYTES == 0
    # Two inputs leave a gap of at least half a page: the output is a quarter page from each, less a line.
    assert min(circular_distance(page_offset(out), offset) for offset in (first_offset, second_offset)) \
        >= PAGE_BYTES // 4 - LINE_BYTES
    out[...] = 1.0  # the whole array is ours to write
    assert out.sum() == out.size
    assert out.base.ctypes.data + start_apart(out.base, first, second) == out.ctypes.data


def test_empty_apart_leaves_a_small_output_a_plain_array(rng):
    shape = (4, APART_MIN_BYTES // 8 // 4 - 1)
    x = rng.standard_normal(shape)
    out = empty_apart(shape, x.dtype, x, x)
    assert out.shape == shape and out.flags.owndata


@pytest.mark.parametrize("dtype", DTYPES)
def test_the_layers_large_fresh_outputs_are_apart_from_their_inputs(rng, dtype):
    """Each input at a page offset 16 or 32 bytes before where malloc would
    likely put the next array (the slow case): every fresh (N, D) output
    is line-aligned and a quarter page from its inputs, and right."""
    x = at_page_offset(LARGE, dtype, 16, rng)
    dout = at_page_offset(LARGE, dtype, 48, rng)
    gamma, beta = rng.standard_normal(LARGE[1]).astype(dtype), rng.standard_normal(LARGE[1]).astype(dtype)

    def apart(out, *inputs):
        return page_offset(out) % LINE_BYTES == 0 and all(
            circular_distance(page_offset(out), page_offset(array)) >= PAGE_BYTES // 4 - LINE_BYTES
            for array in inputs)

    out, cache = fl.relu_forward(x)
    assert apart(out, x) and np.array_equal(out, np.where(x < 0, 0, x))
    dx = fl.relu_backward(dout, cache)
    assert apart(dx, dout, x) and np.array_equal(dx, dout * (x >= 0))
    out, cache = fl.batchnorm_forward(x, gamma, beta, {"mode": "train"})
    assert apart(out, x)
    expected, _ = reference.batchnorm_forward(x, gamma, beta, {"mode": "train"})
    np.testing.assert_allclose(out, expected, rtol=1e-4 if dtype == "float32" else 1e-10, atol=1e-5)
    dx, _, _ = fl.batchnorm_backward(dout, cache)
    assert apart(dx, dout, x)


@pytest.mark.parametrize("dtype", [*DTYPES, None])
def test_empty_like_is_a_placed_c_contiguous_array_like_its_prototype(rng, dtype):
    x = at_page_offset(LARGE, np.float64, 16, rng)
    dout = at_page_offset(LARGE, np.float64, 2064, rng)
    fortran = np.asfortranarray(x[:3, :5])
    for prototype, apart_from in ((x, None), (x, x), (x, [dout, x]), (fortran, ()), (np.ones(0), None)):
        out = fl.empty_like(prototype, dtype, apart_from=apart_from)
        assert out.shape == prototype.shape and out.dtype == (prototype.dtype if dtype is None else dtype)
        assert out.flags.c_contiguous and out.flags.writeable and page_offset(out) % LINE_BYTES == 0
        inputs = [prototype] if apart_from is None else [apart_from] if isinstance(apart_from, np.ndarray) \
            else apart_from
        # One or two inputs leave a gap of at least half a page.
        assert all(circular_distance(page_offset(out), page_offset(array)) >= PAGE_BYTES // 4 - LINE_BYTES
                   for array in inputs)


def test_empty_like_says_what_is_wrong_with_its_arguments():
    with pytest.raises(TypeError, match="empty_like: prototype must be a NumPy array, got list"):
        fl.empty_like([1.0, 2.0])
    with pytest.raises(TypeError, match="empty_like: apart_from must be a NumPy array or hold NumPy arrays, got a int"):
        fl.empty_like(np.ones(3), apart_from=[np.ones(3), 1])
    with pytest.raises(TypeError, match="empty_like: dtype must hold no Python objects, got object"):
        fl.empty_like(np.ones(3), object)
