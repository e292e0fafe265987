from __future__ import annotations

import os
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from numba.core.dispatcher import Dispatcher

from fastlayers._kernels._twins import forced_path

# Kernels compile on first use (seconds), so no per-example deadline.
settings.register_profile(
    "fastlayers", deadline=None, max_examples=60, suppress_health_check=[HealthCheck.too_slow]
)
# Under CI, the same examples every run: a red CI must be reproducible.
settings.register_profile("fastlayers-ci", parent=settings.get_profile("fastlayers"), derandomize=True,
                          database=None)
settings.load_profile("fastlayers-ci" if os.environ.get("CI") else "fastlayers")

DTYPES = [np.float32, np.float64]
PATHS = ["serial", "parallel"]
LAYOUTS = ["C", "F", "strided", "readonly", "byteswapped"]


@pytest.fixture(params=PATHS)
def path(request):
    """Run the test body with every kernel forced onto one path."""
    with forced_path(request.param):
        yield request.param


@pytest.fixture
def rng(request):
    # A seed per test, stable across runs (str hash() is salted per process).
    return np.random.default_rng(zlib.crc32(request.node.nodeid.encode()))


def with_layout(array: np.ndarray, layout: str) -> np.ndarray:
    """The same values as ``array`` in another memory layout."""
    if layout == "C":
        return np.ascontiguousarray(array)
    if layout == "F":
        return np.asfortranarray(array)
    if layout == "strided":
        if array.ndim == 0:
            return array
        wide = np.zeros(array.shape[:-1] + (2 * array.shape[-1],), array.dtype)
        wide[..., ::2] = array
        view = wide[..., ::2]
        assert not view.flags.c_contiguous or array.shape[-1] <= 1 or array.size == 0
        return view
    if layout == "readonly":
        frozen = array.copy()
        frozen.setflags(write=False)
        return frozen
    if layout == "byteswapped":  # as read from a file of the other endianness
        return array.astype(array.dtype.newbyteorder("S"))
    raise ValueError(layout)


def normwise_error(actual: np.ndarray, expected: np.ndarray) -> float:
    """max|actual - expected| / max|expected| (0 for empty arrays)."""
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape
    if expected.size == 0:
        return 0.0
    scale = np.max(np.abs(expected))
    diff = np.max(np.abs(actual - expected))
    return float(diff / scale) if scale > 0 else float(diff)


def assert_close_to_reference(actual, reference64, reference_same_dtype, dtype) -> None:
    """The contract's accuracy rule for one output.

    float64: within 1e-12 normwise of the reference. float32: error against
    the float64 reference at most twice the reference's own float32 error
    (floored at one float32 ulp, 2**-23 normwise: at a handful of
    products the reference can land within half an ulp by luck).
    """
    assert actual.dtype == np.dtype(dtype), (actual.dtype, dtype)
    if np.dtype(dtype) == np.float64:
        assert normwise_error(actual, reference64) <= 1e-12
    else:
        own = normwise_error(reference_same_dtype, reference64)
        assert normwise_error(actual, reference64) <= max(2 * own, 2.0**-23)


def bitwise_equal(a: np.ndarray, b: np.ndarray) -> bool:
    """Same dtype, shape and bits (so NaN == NaN and -0.0 != 0.0)."""
    a = np.ascontiguousarray(a)
    b = np.ascontiguousarray(b)
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def cached_dispatchers() -> dict:
    """Every dispatcher of the package with an on-disk cache, by name (each
    twin of a kernel apart). Imported here, not at the top: a test's
    subprocess calls it too, and must import the kernels itself."""
    from fastlayers import bench
    from fastlayers._kernels import _twins, affine, batchnorm, relu

    found = {"bench._parallel_copy": bench._parallel_copy}
    for module in (affine, batchnorm, relu):
        for name, kernel in vars(module).items():
            if isinstance(kernel, _twins.TwinKernel):
                found[f"{module.__name__}.{name}.serial"] = kernel.serial
                found[f"{module.__name__}.{name}.parallel"] = kernel.parallel
            elif isinstance(kernel, Dispatcher) and type(kernel._cache).__name__ != "NullCache":
                found[f"{module.__name__}.{name}"] = kernel
    return found
