"""fastlayers: the CS231n-style NumPy layers, JIT-compiled with numba.

Six functions with the seed page's signatures and answers::

    affine_forward(x, w, b)                   -> out, cache
    affine_backward(dout, cache)              -> dx, dw, db
    relu_forward(x)                           -> out, cache
    relu_backward(dout, cache)                -> dx
    batchnorm_forward(x, gamma, beta, bn_param) -> out, cache
    batchnorm_backward(dout, cache)           -> dx, dgamma, dbeta

and the fused sandwiches that networks build from them::

    affine_relu_forward(x, w, b)              -> out, cache
    affine_relu_backward(dout, cache)         -> dx, dw, db
    affine_batchnorm_relu_forward(x, w, b, gamma, beta, bn_param) -> out, cache
    affine_batchnorm_relu_backward(dout, cache) -> dx, dw, db, dgamma, dbeta

Forward functions take an optional ``out=``, backward ones optional
gradient arrays (``dx=``, ...), for loops that allocate nothing;
``empty_like`` allocates such arrays where the kernels write fastest.

``fastlayers.reference`` holds the plain-NumPy originals.
"""

from __future__ import annotations

from . import _threads  # first: picks numba's threading layer before any kernel runs
from ._threads import get_num_threads, set_num_threads, threading_layer
from ._cache import BatchNormCache, ReluMask
from ._memory import empty_like
from .layers import (
    affine_backward,
    affine_forward,
    batchnorm_backward,
    batchnorm_forward,
    relu_backward,
    relu_forward,
)
from .sandwiches import (
    affine_batchnorm_relu_backward,
    affine_batchnorm_relu_forward,
    affine_relu_backward,
    affine_relu_forward,
)

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "affine_forward",
    "affine_backward",
    "relu_forward",
    "relu_backward",
    "batchnorm_forward",
    "batchnorm_backward",
    "affine_relu_forward",
    "affine_relu_backward",
    "affine_batchnorm_relu_forward",
    "affine_batchnorm_relu_backward",
    "BatchNormCache",
    "ReluMask",
    "empty_like",
    "warmup",
    "threading_layer",
    "set_num_threads",
    "get_num_threads",
]


def warmup(dtypes: str | tuple[str, ...] = ("float32", "float64"), processes: int = 1) -> None:
    """Compile (or load from the on-disk cache) every kernel for ``dtypes``
    (a dtype's name, or a tuple of them).

    Servers call this once at start-up so that no request pays the
    first-call compile. Both the serial and the parallel twin of every
    kernel (the sandwiches' and the synchronised batch norm's included)
    are prepared, for C-contiguous, writeable inputs (2-D ones where a
    kernel's short entry takes the array's own number of dimensions).

    ``processes`` above 1 compiles in that many new processes at once (this
    interpreter, this fastlayers), each a share of the dtypes' serial and
    parallel kernels, into numba's on-disk cache; this process then loads
    them. numba compiles on one core, so on 2 cores a cold start of both
    dtypes took about half as long (BENCHMARKS.md, session 20). The cache
    takes concurrent saves safely only where Python has ``fcntl`` (see
    ``_kernels/_disk_cache.py``); elsewhere everything compiles here.
    """
    import numpy as np

    if type(processes) is not int:
        raise TypeError(f"warmup: processes must be an int, got {type(processes).__name__}")
    if processes < 1:
        raise ValueError(f"warmup: processes must be at least 1, got {processes}")
    if isinstance(dtypes, str):  # one dtype, not its letters
        dtypes = (dtypes,)
    jobs = []
    for name in dtypes:
        try:
            dtype = np.dtype(name)
        except TypeError:  # not a dtype at all
            dtype = None
        if dtype not in (np.float32, np.float64):
            raise TypeError(f"warmup: dtypes must be float32 or float64, got {name!r}")
        jobs += [f"{dtype.name}:serial", f"{dtype.name}:parallel"]
    from ._kernels import _disk_cache

    if processes > 1 and _disk_cache.fcntl is not None:
        _prepare_in_processes(jobs, min(processes, len(jobs)))
    for job in jobs:
        _prepare(job)


# A worker of warmup(processes=...): the fastlayers its parent imported, then its jobs.
_WORKER = """
import sys
if sys.argv[1] not in sys.path:
    sys.path.insert(0, sys.argv[1])
import fastlayers
for job in sys.argv[2:]:
    fastlayers._prepare(job)
"""


def _prepare_in_processes(jobs: list[str], processes: int) -> None:
    """Run ``jobs`` in ``processes`` new processes at once, each a contiguous
    share (one dtype's serial and parallel kernels together, where there are
    two dtypes and two processes: they share the most helper functions)."""
    import contextlib
    import os
    import subprocess
    import sys
    import tempfile

    package_parent = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    shares = [jobs[i * len(jobs) // processes:(i + 1) * len(jobs) // processes] for i in range(processes)]
    failed = []
    with contextlib.ExitStack() as stack:
        # Each worker's stderr goes to a file, read if it fails: a pipe left
        # unread while another worker is waited for could fill and stall it.
        logs = [stack.enter_context(tempfile.TemporaryFile("w+")) for _ in shares]
        workers: list[subprocess.Popen[str]] = []
        try:
            for share, log in zip(shares, logs):
                workers.append(subprocess.Popen([sys.executable, "-c", _WORKER, package_parent, *share],
                                                stdout=subprocess.DEVNULL, stderr=log, text=True))
            for worker, log in zip(workers, logs):
                if worker.wait() != 0:
                    log.seek(0)
                    failed.append(log.read().strip()[-2000:])
        finally:  # interrupted: no worker outlives the call
            for worker in workers:
                if worker.poll() is None:
                    worker.kill()
                    worker.wait()
    if failed:
        raise RuntimeError("warmup: a compiling process failed:\n" + "\n".join(failed))


def _prepare(job: str) -> None:
    """Compile or load the kernels of ``job``, "dtype:path" ("float64:serial",
    say): every public function called on small arrays of that dtype, with
    the kernels forced onto that path."""
    import numpy as np

    from ._distributed import SingleProcessComm
    from ._kernels import _twins

    name, path = job.split(":")
    dtype = np.dtype(name)
    x = np.ones((4, 3), dtype)
    w = np.ones((3, 2), dtype)
    # Wide enough for batch norm's column stripes at this thread count.
    wide_w = np.ones((3, _twins.STRIPE_COLUMNS * max(2, get_num_threads())), dtype)
    wide = x @ wide_w
    with _twins.forced_path(path):
        out, cache = affine_forward(x, w, np.ones(2, dtype))
        affine_backward(out, cache)
        out, cache = relu_forward(x)
        relu_backward(out, cache)
        params = {"mode": "train"}
        batchnorm_forward(x, x[0], x[0], params)
        out, cache = batchnorm_forward(x, x[0], x[0], params)  # with running statistics: the short entry
        batchnorm_backward(out, cache)
        in_place = x.copy()
        out, cache = relu_forward(in_place, out=in_place)  # the mask-recording kernel
        relu_backward(out, cache)
        out, cache = affine_relu_forward(x, w, w[0])
        affine_relu_backward(out, cache)
        params = {"mode": "train"}
        affine_batchnorm_relu_forward(x, w, w[0], w[0], w[0], params)
        out, cache = affine_batchnorm_relu_forward(x, w, w[0], w[0], w[0], params)
        affine_batchnorm_relu_backward(out, cache)
        out, cache = batchnorm_forward(x, x[0], x[0], {"mode": "train"}, comm=SingleProcessComm())
        batchnorm_backward(out, cache)
        out, cache = batchnorm_forward(wide, wide[0], wide[0], {"mode": "train"})
        batchnorm_backward(out, cache)
        out, cache = affine_batchnorm_relu_forward(x, wide_w, wide[0], wide[0], wide[0], {"mode": "train"})
        affine_batchnorm_relu_backward(out, cache)
