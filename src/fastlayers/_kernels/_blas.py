"""BLAS ``?gemm`` callable from inside numba kernels, with on-disk caching.

numba refuses to cache a kernel that calls a ctypes function pointer (the
address is baked into the code). Instead the kernels call an external
symbol by name, ``fastlayers_dgemm`` / ``fastlayers_sgemm``, which we bind
to SciPy's ``scipy.linalg.cython_blas`` entry points with llvmlite before
any kernel is compiled or loaded from the cache. Binding is lazy
(``ensure_blas``) so that importing fastlayers does not import SciPy.

Why BLAS and not a numba loop: SciPy's OpenBLAS gemm runs at the machine's
peak flop rate on every shape we benchmark, several times faster than any
numba triple loop; we keep the bias fused by filling the output with the
bias and calling gemm with beta = 1.
"""

from __future__ import annotations

import llvmlite.binding as llvm
import numpy as np
from numba import types
from numba.extending import overload, register_jitable

_SYMBOLS = {types.float64: "fastlayers_dgemm", types.float32: "fastlayers_sgemm"}
_bound = False


def ensure_blas() -> None:
    """Bind the gemm symbols to SciPy's BLAS (idempotent, cheap after the first call)."""
    global _bound
    if _bound:
        return
    from scipy.linalg import cython_blas  # noqa: F401  (loads the BLAS library)
    from numba.core.extending import get_cython_function_address

    for symbol in _SYMBOLS.values():
        address = get_cython_function_address("scipy.linalg.cython_blas", symbol[-5:])
        llvm.add_symbol(symbol, address)
    _bound = True


def _gemm_signature(dtype: types.Type) -> types.ExternalFunction:
    p = types.CPointer
    i32 = p(types.int32)
    char = p(types.uint8)
    real = p(dtype)
    # Fortran ?gemm: every argument by reference.
    signature = types.void(char, char, i32, i32, i32, real, real, i32, real, i32, real, real, i32)
    return types.ExternalFunction(_SYMBOLS[dtype], signature)


_GEMM = {dtype: _gemm_signature(dtype) for dtype in _SYMBOLS}


@register_jitable
def _keep_alive(value):
    return value


def gemm(trans_a, trans_b, m, n, k, a, lda, b, ldb, beta, c, ldc):  # pragma: no cover
    """C = A·B + beta·C in column-major terms (callable from njit code only).

    ``trans_a``/``trans_b`` are True for 'T'. ``a``, ``b``, ``c`` are
    C-contiguous arrays of one dtype whose memory holds the column-major
    matrices with the given leading dimensions.
    """
    raise NotImplementedError("gemm is only callable from numba-compiled code")


@overload(gemm)
def _gemm_impl(trans_a, trans_b, m, n, k, a, lda, b, ldb, beta, c, ldc):
    blas_gemm = _GEMM[c.dtype]

    def impl(trans_a, trans_b, m, n, k, a, lda, b, ldb, beta, c, ldc):
        flags = np.empty(2, np.uint8)
        flags[0] = ord("T") if trans_a else ord("N")
        flags[1] = ord("T") if trans_b else ord("N")
        dims = np.empty(6, np.int32)
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
