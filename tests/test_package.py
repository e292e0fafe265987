"""The package surface: __all__, version, typing marker, doctests, helpers."""

from __future__ import annotations

import doctest
import os
import importlib.metadata
import importlib.resources
import subprocess
import sys
import threading

import numba
import numpy as np
import pytest
from threadpoolctl import threadpool_info

import fastlayers as fl
import fastlayers.layers


def test_public_api():
    for name in ("affine_forward", "affine_backward", "relu_forward", "relu_backward",
                 "batchnorm_forward", "batchnorm_backward"):
        assert name in fl.__all__
        function = getattr(fl, name)
        assert function.__doc__ and "Examples" in function.__doc__
        assert function.__annotations__
    assert all(hasattr(fl, name) for name in fl.__all__)
    assert isinstance(fl.__version__, str) and fl.__version__.count(".") == 2


def test_py_typed_marker_is_installed():
    assert importlib.resources.files("fastlayers").joinpath("py.typed").is_file()


@pytest.mark.parametrize("module", ["layers", "sandwiches", "_memory"])
def test_docstring_examples(module):
    result = doctest.testmod(importlib.import_module(f"fastlayers.{module}"), optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted >= 2 and result.failed == 0


def test_threading_layer_is_named():
    assert fl.threading_layer() in ("tbb", "omp", "workqueue")


def test_threading_layer_is_tbb_when_installed():
    try:
        importlib.metadata.distribution("tbb")
        expected = "tbb"
    except importlib.metadata.PackageNotFoundError:  # tbb is a dependency on x86-64 only
        expected = None
    code = "import fastlayers; print(fastlayers.threading_layer())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == expected if expected else out.stdout.strip() in ("omp", "workqueue")


TESTS = os.path.dirname(os.path.abspath(__file__))
WARMUP_COVERS_THE_TABLE = """
import sys

import numpy as np
from numba.core import event

import fastlayers
from fastlayers._table import LAYERS

sys.path.insert(0, sys.argv[2])  # the tests' folder
from conftest import cached_dispatchers


def compiled():  # signatures of every cached kernel, each twin apart
    return {name: len(kernel.signatures) for name, kernel in cached_dispatchers().items()}


with event.install_recorder("numba:compile") as recorder:  # compiles, not loads from the cache
    fastlayers.warmup(processes=int(sys.argv[1]))
compiled_here = sum(1 for _, record in recorder.buffer if record.is_start)
warm = compiled()
rng = np.random.default_rng(0)
for dtype in (np.float32, np.float64):
    for size in ("small", "medium"):
        for layer in LAYERS:
            args = layer.call_args("fastlayers", layer.inputs(rng, size, dtype))
            for _ in range(2):  # the second batch-norm forward finds running statistics
                layer.function("fastlayers")(*args)
print(sum(warm.values()), compiled_here, sorted(name for name, count in compiled().items() if count != warm[name]))
"""


def test_warmup_prepares_every_kernel_the_layers_call():
    """After warmup(), the table's layers at the small and the medium size
    (serial and parallel twins, short entries and general paths) compile
    and load nothing more."""
    done = subprocess.run([sys.executable, "-c", WARMUP_COVERS_THE_TABLE, "1", TESTS], capture_output=True, text=True,
                          timeout=900, check=False)
    assert done.returncode == 0, done.stderr
    prepared, _, missed = done.stdout.split(" ", 2)
    assert int(prepared) >= 40 and missed.strip() == "[]", done.stdout


def test_warmup_in_two_processes_fills_an_empty_cache_that_this_one_loads(tmp_path):
    """warmup(processes=2) into an empty cache: two new processes compile
    every kernel at once (saving under the cache's lock), this process
    compiles nothing and loads them all, and the table's layers then
    compile and load nothing more."""
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", WARMUP_COVERS_THE_TABLE, "2", TESTS], capture_output=True, text=True,
                          timeout=900, env=env, check=False)
    assert done.returncode == 0, done.stderr
    prepared, compiled_here, missed = done.stdout.split(" ", 2)
    assert int(prepared) >= 40 and int(compiled_here) == 0 and missed.strip() == "[]", done.stdout


def test_set_num_threads_validates_and_applies():
    before = fl.get_num_threads()
    with pytest.raises(ValueError, match="set_num_threads"):
        fl.set_num_threads(0)
    with pytest.raises(TypeError, match="set_num_threads"):
        fl.set_num_threads(1.5)
    try:
        fl.set_num_threads(1)
        # As documented: the limit holds for every BLAS loaded by then (NumPy's,
        # which the affine kernels call, among them) in the whole process, and
        # numba's count for the calling thread only (numba keeps one per thread).
        blas_pools = [pool for pool in threadpool_info() if pool["user_api"] == "blas"]
        assert blas_pools and all(pool["num_threads"] == 1 for pool in blas_pools), blas_pools
        assert fl.get_num_threads() == 1
        out, _ = fl.relu_forward(-np.ones(200_000))  # parallel size, one thread: still right
        assert not out.any()
        seen_by_another_thread = []
        worker = threading.Thread(target=lambda: seen_by_another_thread.append(fl.get_num_threads()))
        worker.start()
        worker.join()
        assert seen_by_another_thread == [numba.config.NUMBA_NUM_THREADS]
    finally:
        fl.set_num_threads(before)


def test_a_failing_warmup_process_raises_with_its_error():
    with pytest.raises(RuntimeError, match="warmup: a compiling process failed:(.|\n)*nonsense"):
        fl._prepare_in_processes(["nonsense:serial", "float64:nowhere"], 2)


def test_warmup_validates_its_arguments():
    with pytest.raises(TypeError, match="warmup: dtypes"):
        fl.warmup(dtypes=("float16",))
    with pytest.raises(TypeError, match="warmup: dtypes must be float32 or float64, got 'nonsense'"):
        fl.warmup(dtypes=("nonsense",))
    with pytest.raises(TypeError, match="warmup: dtypes must be float32 or float64, got 'int64'"):
        fl.warmup(dtypes="int64")  # one name, not its letters
    with pytest.raises(ValueError, match="warmup: processes"):
        fl.warmup(processes=0)
    with pytest.raises(TypeError, match="warmup: processes"):
        fl.warmup(processes=2.0)
    fl.warmup(dtypes=("float64",))


def test_ci_tests_the_installed_package():
    """Under CI the package comes from the built wheel, not from src/."""
    if not os.environ.get("CI"):
        return
    assert "site-packages" in fastlayers.__file__, fastlayers.__file__


def test_blas_is_numpys_own_when_possible():
    from fastlayers._kernels._blas import ensure_blas

    int_type = ensure_blas()
    assert int_type in (np.int32, np.int64)
    if _numpy_blas_is_ilp64_openblas():
        assert int_type == np.int64  # NumPy's ILP64 OpenBLAS, one thread pool shared with x @ w


def _numpy_blas_is_ilp64_openblas():
    """What NumPy's build configuration says of its BLAS: show_config's
    dicts where NumPy has them (meson builds), else the distutils info of
    older NumPy (1.24, the oldest the package admits)."""
    try:
        config = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
    except TypeError:  # older NumPy: show_config() takes no mode
        info = np.__config__.get_info("blas_ilp64_opt_info")
        return any(name.startswith("openblas64") for name in info.get("libraries", ()))
    return config.get("name") == "scipy-openblas" and "USE64BITINT" in str(config.get("openblas configuration", ""))


def test_scipy_blas_fallback_computes_the_same():
    """Where NumPy's BLAS cannot be found, SciPy's LP64 gemm serves."""
    code = (
        "import numpy as np\n"
        "import fastlayers._kernels._blas as blas\n"
        "blas._bind_numpy_ilp64 = lambda: False\n"
        "import fastlayers as fl\n"
        "assert blas.ensure_blas() is np.int32\n"
        "rng = np.random.default_rng(1)\n"
        "x, w, b = rng.standard_normal((30, 20)), rng.standard_normal((20, 10)), rng.standard_normal(10)\n"
        "out, cache = fl.affine_forward(x, w, b)\n"
        "dx, dw, db = fl.affine_backward(np.ones((30, 10)), cache)\n"
        "assert np.allclose(out, x @ w + b, rtol=1e-12, atol=1e-12)\n"
        "assert np.allclose(dw, x.T @ np.ones((30, 10)), rtol=1e-12, atol=1e-12)\n"
        "print('ok')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"
