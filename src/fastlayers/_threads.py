"""Which threading layer numba uses, and how many threads run.

The layer is chosen on import, before any parallel kernel runs:

* ``tbb`` when the ``tbb`` package is installed (a dependency on x86-64):
  safe for concurrent callers from several Python threads and for
  ``multiprocessing`` pools with the fork, spawn and forkserver methods.
  numba finds the wheel's ``libtbb.so.12`` only if it is already loaded,
  so we load it first.
* otherwise numba's own choice (usually ``omp``, GNU OpenMP: thread-safe
  but a child forked after parallel work can hang). ``workqueue`` is never
  a good choice: two threads launching kernels at once abort the process.

``NUMBA_THREADING_LAYER`` set by the user always wins; the tbb library is
loaded in any case, so that a user who asks for ``tbb`` (or for a
``threadsafe``/``forksafe`` choice that includes it) gets it.
"""

from __future__ import annotations

import ctypes
import os
import sys
from importlib import metadata

import numba


def _load_tbb() -> bool:
    """Load the tbb wheel's shared library globally; True if it is loaded."""
    try:
        files = metadata.files("tbb") or []
    except metadata.PackageNotFoundError:
        return False
    for entry in files:
        if entry.name == "libtbb.so.12" or (sys.platform == "darwin" and entry.name == "libtbb.12.dylib"):
            try:
                ctypes.CDLL(str(entry.locate()), mode=ctypes.RTLD_GLOBAL)
            except OSError:
                return False
            return True
    return False


def _choose_layer() -> None:
    tbb_loaded = _load_tbb()
    if tbb_loaded and "NUMBA_THREADING_LAYER" not in os.environ:
        numba.config.THREADING_LAYER = "tbb"


_choose_layer()


def threading_layer() -> str:
    """The numba threading layer in force (``'tbb'``, ``'omp'`` or ``'workqueue'``).

    numba settles the layer at the first parallel launch; this function
    makes one tiny launch if none has happened yet.
    """
    try:
        return numba.threading_layer()
    except ValueError:
        from ._kernels.relu import _relu_forward
        import numpy as np

        probe = np.zeros(1)
        _relu_forward.parallel(probe, probe.copy(), np.empty(0, np.bool_), False)
        return numba.threading_layer()


def get_num_threads() -> int:
    """The number of threads numba's parallel kernels use in this thread."""
    return numba.get_num_threads()


def set_num_threads(n: int) -> None:
    """Use ``n`` threads for fastlayers' kernels: numba's and the BLAS's together.

    ``n`` may not exceed ``NUMBA_NUM_THREADS`` (by default the core count).
    numba keeps its count per calling thread: another Python thread keeps
    its own (the default, unless it calls this too). The BLAS libraries
    loaded by then (NumPy's OpenBLAS, which the affine kernels call, among
    them) are limited for the whole process, with threadpoolctl, so the two
    pools never add up to more than ``n``. A BLAS loaded later (SciPy's,
    when ``scipy.linalg`` is first imported) starts with its own default.
    """
    if isinstance(n, bool) or not isinstance(n, int):
        raise TypeError(f"set_num_threads: n must be an int, got {type(n).__name__}")
    if not 1 <= n <= numba.config.NUMBA_NUM_THREADS:
        raise ValueError(
            f"set_num_threads: n must be between 1 and NUMBA_NUM_THREADS="
            f"{numba.config.NUMBA_NUM_THREADS}, got {n}"
        )
    numba.set_num_threads(n)
    from threadpoolctl import threadpool_limits

    from ._kernels._blas import ensure_blas

    ensure_blas()  # load the BLAS our kernels call, so that threadpoolctl sees it too
    threadpool_limits(limits=n, user_api="blas")
