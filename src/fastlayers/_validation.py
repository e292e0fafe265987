"""Argument checking shared by the public functions.

Every check raises a plain Python exception whose message starts with the
function and the argument at fault, so that a bad call never reaches a numba
kernel (which would answer with a typing traceback or read out of bounds).
"""

from __future__ import annotations

from typing import Any

import numpy as np

SUPPORTED = "float32 or float64 (integer and bool inputs are converted to float64)"

# BLAS takes 32-bit integer dimensions.
_MAX_BLAS_DIM = 2**31 - 1


def as_float_array(value: Any, func: str, name: str) -> np.ndarray:
    """Return ``value`` as an ndarray of float32 or float64.

    float32/float64 arrays are returned as they are (any layout, no copy);
    integer and bool arrays are converted to float64. Everything else
    (float16, longdouble, complex, object, strings, ...) is a TypeError.
    """
    try:
        array = np.asarray(value)
    except (ValueError, TypeError) as exc:
        raise TypeError(f"{func}: {name} cannot be read as an array: {exc}") from None
    kind = array.dtype.kind
    if kind == "f" and array.dtype.itemsize in (4, 8):
        return array
    if kind in "iub":
        return array.astype(np.float64)
    raise TypeError(
        f"{func}: {name} has dtype {array.dtype}, which is not supported; "
        f"use {SUPPORTED}"
    )


def check_ndim(array: np.ndarray, ndim: int, func: str, name: str, shape_hint: str) -> None:
    if array.ndim != ndim:
        raise ValueError(
            f"{func}: {name} must be {ndim}-D with shape {shape_hint}, "
            f"got shape {array.shape}"
        )


def check_shape(array: np.ndarray, expected: tuple[int, ...], func: str, name: str, why: str) -> None:
    if array.shape != expected:
        raise ValueError(
            f"{func}: {name} has shape {array.shape} but {why} needs shape {expected}"
        )


def check_blas_dims(func: str, **dims: int) -> None:
    for name, size in dims.items():
        if size > _MAX_BLAS_DIM:
            raise ValueError(
                f"{func}: dimension {name}={size} exceeds the BLAS limit of {_MAX_BLAS_DIM}"
            )
