"""Argument checking shared by the public functions.

Every check raises a plain Python exception whose message starts with the
function and the argument at fault, so that a bad call never reaches a numba
kernel (which would answer with a typing traceback or read out of bounds).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Set
from typing import Any

import numpy as np

SUPPORTED = "float32 or float64 (integer and bool inputs are converted to float64)"

# The dtypes the kernels read, in the machine's byte order. ``dtype is
# FLOAT32`` is the fast test of the short entries; the other byte order,
# or an equal dtype that is another object, takes the general path.
FLOAT32 = np.dtype(np.float32)
FLOAT64 = np.dtype(np.float64)

# BLAS takes 32-bit integer dimensions.
MAX_BLAS_DIM = 2**31 - 1


def as_float_array(value: Any, func: str, name: str) -> np.ndarray:
    """Return ``value`` as an ndarray of float32 or float64.

    float32/float64 arrays are returned as they are (any layout, no copy);
    integer and bool arrays are converted to float64, and floats stored in
    the other byte order (read from a big-endian file, say) to the same
    dtype in the machine's order, which is all numba can read. Everything
    else (float16, longdouble, complex, object, strings, ...) is a TypeError,
    and so is a masked array, whose mask no layer could honour.
    """
    if type(value) is np.ndarray:  # the common case, kept cheap
        dtype = value.dtype
        if dtype.char in "fd" and dtype.isnative:
            return value
    if _is_masked(value):
        raise TypeError(
            f"{func}: {name} is a masked array, whose mask the layers cannot honour; "
            f"pass {name}.filled(value) or np.asarray({name}) (which ignores the mask)"
        )
    try:
        array = np.asarray(value)
    except (ValueError, TypeError) as exc:
        raise TypeError(f"{func}: {name} cannot be read as an array: {exc}") from None
    kind = array.dtype.kind
    if kind == "f" and array.dtype.itemsize in (4, 8):
        return array if array.dtype.isnative else array.astype(array.dtype.newbyteorder("="))
    if kind in "iub":
        return array.astype(np.float64)
    raise TypeError(
        f"{func}: {name} has dtype {array.dtype}, which is not supported; "
        f"use {SUPPORTED}"
    )


def _is_masked(value: Any) -> bool:
    """Whether value is a NumPy masked array (numpy.ma is not imported for it:
    if nobody has imported it, value cannot be one)."""
    ma = sys.modules.get("numpy.ma")
    return ma is not None and isinstance(value, ma.MaskedArray)


def check_ndim(array: np.ndarray, ndim: int, func: str, name: str, shape_hint: str) -> None:
    if array.ndim != ndim:
        raise ValueError(
            f"{func}: {name} must be {ndim}-D with shape {shape_hint}, "
            f"got shape {array.shape}"
        )


def check_shape(array: np.ndarray, expected: tuple[int, ...], func: str, name: str, why: str,
                *why_args: Any) -> None:
    """ValueError unless ``array.shape == expected``; ``why`` (formatted with
    ``why_args`` only on failure: formatting costs more than the check) says
    what asks for that shape."""
    if array.shape != expected:
        raise ValueError(
            f"{func}: {name} has shape {array.shape} but {why.format(*why_args)} needs shape {expected}"
        )


def check_blas_dims(func: str, n: int, d: int, m: int) -> None:
    """ValueError if a matrix dimension (N, D or M) is too large for BLAS."""
    if n <= MAX_BLAS_DIM and d <= MAX_BLAS_DIM and m <= MAX_BLAS_DIM:  # no dict of names built
        return
    for name, size in (("N", n), ("D", d), ("M", m)):
        if size > MAX_BLAS_DIM:
            raise ValueError(
                f"{func}: dimension {name}={size} exceeds the BLAS limit of {MAX_BLAS_DIM}"
            )


def check_output(out: Any, shape: tuple[int, ...], dtype: np.dtype, func: str, name: str) -> np.ndarray:
    """``out`` checked as a caller-supplied result array.

    As strict as ``np.dot``'s ``out``: exactly the result's shape and
    dtype, C-contiguous and writeable.
    """
    if not isinstance(out, np.ndarray) or _is_masked(out):
        raise TypeError(f"{func}: {name} must be a NumPy array or None, got {type(out).__name__}")
    if out.shape != tuple(shape):
        raise ValueError(f"{func}: {name} has shape {out.shape} but the result has shape {tuple(shape)}")
    if out.dtype != dtype:
        raise ValueError(f"{func}: {name} has dtype {out.dtype} but the result has dtype {np.dtype(dtype)}")
    if not out.flags.c_contiguous:
        raise ValueError(f"{func}: {name} must be C-contiguous")
    if not out.flags.writeable:
        raise ValueError(f"{func}: {name} is read-only")
    return out


def data_address(array: np.ndarray) -> int:
    """The address of ``array``'s first element."""
    return array.__array_interface__["data"][0]


def _same_memory(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether a and b are the same elements in the same order (one array, two names)."""
    return (data_address(a) == data_address(b)
            and a.shape == b.shape and a.strides == b.strides and a.dtype == b.dtype)


def check_overlaps(
    func: str,
    outputs: dict[str, np.ndarray],
    inputs: dict[str, np.ndarray],
    in_place: tuple[tuple[str, str], ...] = (),
) -> set[tuple[str, str]]:
    """Refuse caller-supplied outputs that overlap an input or each other.

    ``outputs`` maps names to the caller's arrays. A pair (output, input) in ``in_place``
    may be the very same array, because the kernel reads each element of
    that input before it writes the same element of the output; any other
    overlap (a shifted or transposed view, a shared buffer) is a
    ValueError. Returns the in-place pairs found.
    """
    found = set()
    supplied = list(outputs.items())
    for index, (out_name, out) in enumerate(supplied):
        for other_name, other in supplied[index + 1:]:
            if np.may_share_memory(out, other):
                raise ValueError(f"{func}: {out_name} and {other_name} share memory; pass separate arrays")
        for in_name, array in inputs.items():
            if not np.may_share_memory(out, array):
                continue
            if (out_name, in_name) in in_place and _same_memory(out, array):
                found.add((out_name, in_name))
                continue
            allowed = " (only exactly in place is allowed)" if (out_name, in_name) in in_place else ""
            raise ValueError(f"{func}: {out_name} overlaps {in_name}, which the computation still reads{allowed}; "
                             f"pass a separate array")
    return found


_NO_PAIRS: frozenset[tuple[str, str]] = frozenset()
OutputSpec = tuple[str, Any, tuple[int, ...], np.dtype]  # (name, caller's array or None, shape, dtype)


def prepare_outputs(
    func: str,
    specs: tuple[OutputSpec, ...],
    inputs: Callable[[], dict[str, np.ndarray]],
    in_place: tuple[tuple[str, str], ...] = (),
) -> tuple[list[np.ndarray], Set[tuple[str, str]]]:
    """The result arrays of ``func``: the caller's, checked (``check_output``,
    ``check_overlaps`` against ``inputs()``, called only then), or new ones.
    Returns them in ``specs``' order, and the in-place pairs found."""
    # The common case, kept cheap (a small call's whole budget is a few us):
    # nothing supplied, so new arrays and no comprehension or set built.
    arrays = []
    for _, value, shape, dtype in specs:
        if value is not None:
            break
        arrays.append(np.empty(shape, dtype=dtype))
    else:
        return arrays, _NO_PAIRS
    supplied = {name: check_output(value, shape, dtype, func, name)
                for name, value, shape, dtype in specs if value is not None}
    found = check_overlaps(func, supplied, inputs(), in_place)
    arrays = [supplied[name] if name in supplied else np.empty(shape, dtype=dtype)
              for name, _, shape, dtype in specs]
    return arrays, found
