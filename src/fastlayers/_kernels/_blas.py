"""BLAS ``?gemm`` callable from inside numba kernels, with on-disk caching.

numba refuses to cache a kernel that calls a ctypes function pointer (the
address is baked into the code). Instead the kernels call external symbols
by name (``fastlayers_dgemm_i64`` and friends), which ``ensure_blas`` binds
with llvmlite before any kernel is compiled or loaded from the cache.

Which BLAS: NumPy's own, when it can be found (NumPy's wheels bundle an
ILP64 OpenBLAS exporting ``scipy_dgemm_64_``). Sharing NumPy's library
matters: two OpenBLAS libraries mean two thread pools whose idle threads
spin while the other works, and measured here (1024x3072x1024 float64, 2
cores) alternating NumPy's ``x @ w`` with a gemm from SciPy's separate
OpenBLAS ran both at 0.116 s instead of 0.064 s. SciPy's
``scipy.linalg.cython_blas`` (LP64) is the fallback for other NumPy builds.

Why BLAS and not a numba loop: gemm runs near the machine's peak flop rate
on every benchmarked shape, several times faster than a numba triple loop;
the bias stays fused by filling the output with it and calling gemm with
beta = 1 (tiny products add it after a gemm with beta = 0: see affine.py).

The BLAS integer width is part of the kernel's signature: kernels receive a
``blas_int`` scalar (int64 or int32) and call the symbol of that width, so
a cached kernel can never call a BLAS with the wrong integer size.
"""

from __future__ import annotations

import ctypes
import os

import llvmlite.binding as llvm
import numpy as np
from numba import types
from numba.extending import overload, register_jitable


def _symbol(letter: str, int_type: types.Integer) -> str:
    return f"fastlayers_{letter}gemm_i{int_type.bitwidth}"


def _numpy_blas() -> ctypes.CDLL | None:
    """NumPy's bundled BLAS library, if threadpoolctl can see it."""
    from threadpoolctl import threadpool_info

    numpy_dir = os.path.dirname(os.path.dirname(np.__file__))
    for library in threadpool_info():
        path = library.get("filepath", "")
        if library.get("user_api") == "blas" and path.startswith(numpy_dir) and "numpy" in path:
            try:
                return ctypes.CDLL(path)
            except OSError:
                return None
    return None


def _bind_numpy_ilp64() -> bool:
    library = _numpy_blas()
    if library is None:
        return False
    for prefix in ("scipy_", ""):
        try:
            pointers = {letter: getattr(library, f"{prefix}{letter}gemm_64_") for letter in "ds"}
        except AttributeError:
            continue
        for letter, function in pointers.items():
            llvm.add_symbol(_symbol(letter, types.int64), ctypes.cast(function, ctypes.c_void_p).value)
        return True
    return False


def _bind_scipy_lp64() -> None:
    from numba.core.extending import get_cython_function_address
    from scipy.linalg import cython_blas  # noqa: F401  (loads SciPy's BLAS)

    for letter in "ds":
        address = get_cython_function_address("scipy.linalg.cython_blas", f"{letter}gemm")
        llvm.add_symbol(_symbol(letter, types.int32), address)


_blas_zero: np.integer | None = None


def blas_int_zero() -> np.integer:
    """0 as a scalar of the BLAS integer type: the kernels' ``blas_int``
    argument (its type picks the gemm symbol). Binds the gemm symbols on
    first use; made once, as a small call's budget is a few microseconds."""
    global _blas_zero
    if _blas_zero is None:
        if _bind_numpy_ilp64():
            _blas_zero = np.int64(0)
        else:
            _bind_scipy_lp64()
            _blas_zero = np.int32(0)
    return _blas_zero


def ensure_blas() -> type:
    """Bind the gemm symbols once; return the BLAS integer type (np.int64 or np.int32)."""
    return type(blas_int_zero())


def _gemm_function(dtype: types.Type, int_type: types.Integer) -> types.ExternalFunction:
    p = types.CPointer
    integer = p(int_type)
    char = p(types.uint8)
    real = p(dtype)
    # Fortran ?gemm: every argument by reference.
    signature = types.void(char, char, integer, integer, integer, real, real, integer, real, integer, real,
                           real, integer)
    letter = "d" if dtype == types.float64 else "s"
    return types.ExternalFunction(_symbol(letter, int_type), signature)


@register_jitable
def _keep_alive(value):
    return value


def gemm(blas_int, trans_a, trans_b, m, n, k, a, lda, b, ldb, beta, c, ldc):  # pragma: no cover
    """C = A·B + beta·C in column-major terms (callable from njit code only).

    ``blas_int`` is a scalar of the BLAS's integer type (``blas_int_zero()``).
    ``trans_a``/``trans_b`` are True for 'T'. ``a``, ``b``, ``c`` are
    C-contiguous arrays of one dtype whose memory holds the column-major
    matrices with the given leading dimensions.
    """
    raise NotImplementedError("gemm is only callable from numba-compiled code")


@overload(gemm)
def _gemm_impl(blas_int, trans_a, trans_b, m, n, k, a, lda, b, ldb, beta, c, ldc):
    blas_gemm = _gemm_function(c.dtype, blas_int)
    int_dtype = np.int64 if blas_int.bitwidth == 64 else np.int32

    def impl(blas_int, trans_a, trans_b, m, n, k, a, lda, b, ldb, beta, c, ldc):
        flags = np.empty(2, np.uint8)
        flags[0] = ord("T") if trans_a else ord("N")
        flags[1] = ord("T") if trans_b else ord("N")
        dims = np.empty(6, int_dtype)
        dims[0] = m
        dims[1] = n
        dims[2] = k
        dims[3] = max(1, lda)
        dims[4] = max(1, ldb)
        dims[5] = max(1, ldc)
        scalars = np.empty(2, c.dtype)
        scalars[0] = 1.0
        scalars[1] = beta
        blas_gemm(
            flags[0:].ctypes, flags[1:].ctypes,
            dims[0:].ctypes, dims[1:].ctypes, dims[2:].ctypes,
            scalars[0:].ctypes, a.ctypes, dims[3:].ctypes, b.ctypes, dims[4:].ctypes,
            scalars[1:].ctypes, c.ctypes, dims[5:].ctypes,
        )
        # Uses after the call keep the argument buffers alive through it.
        return _keep_alive(flags.size + dims.size + scalars.size)

    return impl
