"""``fastlayers.empty_like``: arrays for out= that are 64-byte aligned and
apart from the kernel's inputs within a page (``fastlayers._memory``)."""

from __future__ import annotations

import mmap
from itertools import pairwise

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import fastlayers as fl
from fastlayers._kernels._twins import WALK_BACK_MIN_BYTES
from fastlayers._memory import _MINCORE, LINE_BYTES, PAGE_BYTES, fresh_pages, page_offset_apart

from conftest import DTYPES, bitwise_equal

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
    assert page_offset_apart(offsets) == expected


@given(st.lists(st.integers(0, PAGE_BYTES - 1), min_size=1, max_size=5))
def test_page_offset_apart_is_a_line_as_far_from_every_offset_as_lines_allow(offsets):
    chosen = page_offset_apart(offsets)
    assert 0 <= chosen < PAGE_BYTES and chosen % LINE_BYTES == 0
    ordered = sorted(offsets)
    widest = max([b - a for a, b in pairwise(ordered)] + [ordered[0] + PAGE_BYTES - ordered[-1]])
    # The middle of the widest gap is widest / 2 from its ends; rounding to a line moves it less than a line.
    assert min(circular_distance(chosen, offset) for offset in offsets) > widest // 2 - LINE_BYTES


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
        # One or two inputs leave a gap of at least half a page: its middle is a quarter page from each.
        assert all(circular_distance(page_offset(out), page_offset(array)) >= PAGE_BYTES // 4 - LINE_BYTES
                   for array in inputs)


@pytest.mark.parametrize("dtype", DTYPES)
def test_empty_like_arrays_serve_as_out_with_the_same_bits(rng, dtype):
    x = at_page_offset(LARGE, dtype, 16, rng)
    dout = at_page_offset(LARGE, dtype, 48, rng)
    gamma, beta = rng.standard_normal(LARGE[1]).astype(dtype), rng.standard_normal(LARGE[1]).astype(dtype)
    expected, cache = fl.batchnorm_forward(x, gamma, beta, {"mode": "train"})
    out, _ = fl.batchnorm_forward(x, gamma, beta, {"mode": "train"}, out=fl.empty_like(x))
    assert bitwise_equal(out, expected)
    dx = fl.batchnorm_backward(dout, cache, dx=fl.empty_like(x, apart_from=(dout, x)))[0]
    assert bitwise_equal(dx, fl.batchnorm_backward(dout, cache)[0])
    out, _ = fl.relu_forward(x, out=fl.empty_like(x))
    assert bitwise_equal(out, fl.relu_forward(x)[0])


def test_empty_like_says_what_is_wrong_with_its_arguments():
    with pytest.raises(TypeError, match="empty_like: prototype must be a NumPy array, got list"):
        fl.empty_like([1.0, 2.0])
    with pytest.raises(TypeError, match="empty_like: apart_from must be a NumPy array or hold NumPy arrays, got a int"):
        fl.empty_like(np.ones(3), apart_from=[np.ones(3), 1])
    with pytest.raises(TypeError, match="empty_like: dtype must hold no Python objects, got object"):
        fl.empty_like(np.ones(3), object)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [LARGE, (37, 2053)])
def test_outputs_anywhere_within_a_line_get_the_same_bits(path, rng, dtype, shape):
    # The normalise and the dx pass split their column ranges where the
    # output's row starts a cache line (_twins.elements_before_line); rows
    # of 2053 elements start at every offset within a line. No bit may
    # depend on where the split falls.
    dtype = np.dtype(dtype)
    x = at_page_offset(shape, dtype, 16, rng)
    dout = at_page_offset(shape, dtype, 2064, rng)
    gamma, beta = rng.standard_normal(shape[1]).astype(dtype), rng.standard_normal(shape[1]).astype(dtype)
    expected, cache = fl.batchnorm_forward(x, gamma, beta, {"mode": "train"})
    expected_dx = fl.batchnorm_backward(dout, cache)[0]
    for offset in range(1024, 1024 + LINE_BYTES, dtype.itemsize):
        out = at_page_offset(shape, dtype, offset, rng)
        assert bitwise_equal(fl.batchnorm_forward(x, gamma, beta, {"mode": "train"}, out=out)[0], expected)
        dx = at_page_offset(shape, dtype, offset, rng)
        assert bitwise_equal(fl.batchnorm_backward(dout, cache, dx=dx)[0], expected_dx)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("width", [4096, 500])
def test_fresh_outputs_written_from_their_end_get_the_same_bits(path, rng, dtype, width):
    # Outputs the layers allocate, of WALK_BACK_MIN_BYTES or more, are
    # written block by block from their end; out= and dx= arrays front to
    # back ("Fresh outputs written from their end" in _twins.py). Rows of
    # 4096 take the normalise's and the dx pass's sweeps, rows of 500 their
    # row-by-row loops; three rows past the size leave a part-filled block.
    dtype = np.dtype(dtype)
    rows = -(-WALK_BACK_MIN_BYTES // (width * dtype.itemsize)) + 3
    x = rng.standard_normal((rows, width)).astype(dtype)
    dout = rng.standard_normal((rows, width)).astype(dtype)
    gamma, beta = rng.standard_normal(width).astype(dtype), rng.standard_normal(width).astype(dtype)
    into = np.empty_like(x)
    assert bitwise_equal(fl.relu_forward(x)[0], fl.relu_forward(x, out=into)[0])
    assert bitwise_equal(fl.relu_backward(dout, x), fl.relu_backward(dout, x, dx=into))
    out, cache = fl.batchnorm_forward(x, gamma, beta, {"mode": "train"})
    assert bitwise_equal(out, fl.batchnorm_forward(x, gamma, beta, {"mode": "train"}, out=into)[0])
    dx = fl.batchnorm_backward(dout, cache)[0]
    assert bitwise_equal(dx, fl.batchnorm_backward(dout, cache, dx=into)[0])


def test_fresh_pages_tells_a_new_mapping_from_memory_in_use():
    # Only outputs of WALK_BACK_MIN_BYTES or more whose last page is not in
    # memory yet (malloc has just mapped them) are written from their end.
    assert not fresh_pages(np.empty(WALK_BACK_MIN_BYTES - 1, np.uint8))
    # A mapping of its own, as malloc makes for such a size (unless told
    # otherwise, e.g. by GLIBC_TUNABLES=glibc.malloc.mmap_max=0).
    mapped = np.frombuffer(mmap.mmap(-1, WALK_BACK_MIN_BYTES), np.uint8)
    assert fresh_pages(mapped)
    mapped[-1] = 1
    # Where there is no mincore to ask, an output that large counts as fresh.
    assert fresh_pages(mapped) == (_MINCORE is None)
