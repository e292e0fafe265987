"""Concurrency, fork safety, thread-count determinism, edge numerics and leaks."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import fastlayers as fl
from fastlayers import reference as ref
from fastlayers._distributed import SingleProcessComm
from fastlayers._kernels._twins import forced_path
from fastlayers._table import LAYERS

from conftest import bitwise_equal, normwise_error

SCRIPTS = Path(__file__).parent / "scripts"


def _run_script(name: str, *args: str, env: dict[str, str] | None = None, timeout: float = 300) -> str:
    done = subprocess.run([sys.executable, str(SCRIPTS / name), *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})
    assert done.returncode == 0, done.stderr
    return done.stdout


def _outputs(result) -> list[np.ndarray]:
    if isinstance(result, np.ndarray):
        return [result]
    return [r for r in result if isinstance(r, np.ndarray)]


def test_concurrent_callers_get_single_threaded_bits():
    """Eight Python threads run all six functions on the parallel path at once."""
    rng = np.random.default_rng(11)
    cases = []
    for layer in LAYERS:
        shape = (300, 240, 200) if layer.family == "affine" else (400, 300)
        inputs = layer.inputs(rng, shape, "float64")
        cases.append((layer, inputs))
    with forced_path("parallel"):
        expected = [_outputs(layer.function("fastlayers")(*layer.call_args("fastlayers", inputs)))
                    for layer, inputs in cases]
        failures: list[str] = []
        calls = [0]
        deadline = time.monotonic() + 3.0

        def worker(offset: int) -> None:
            try:
                step = offset
                while time.monotonic() < deadline:
                    layer, inputs = cases[step % len(cases)]
                    got = _outputs(layer.function("fastlayers")(*layer.call_args("fastlayers", inputs)))
                    if not all(bitwise_equal(a, b) for a, b in zip(got, expected[step % len(cases)])):
                        failures.append(layer.name)
                    calls[0] += 1
                    step += 1
            except Exception as exc:  # reported below, not swallowed
                failures.append(repr(exc))

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads)
    assert failures == []
    assert calls[0] >= 8 * len(cases)


def test_pools_after_parallel_work_fork_spawn_forkserver():
    out = _run_script("pools.py", timeout=400).split("\n")
    assert out[0] == f"layer {fl.threading_layer()}"
    assert out[1:4] == ["fork ok", "spawn ok", "forkserver ok"]


def test_same_bits_for_numba_thread_counts_1_2_4():
    """NUMBA_NUM_THREADS (read at import) 1, 2 and 4, BLAS threads fixed: one answer."""
    lines = [
        _run_script("fingerprint.py", "--numba-threads", str(n), env={"NUMBA_NUM_THREADS": str(n)}).split()
        for n in (1, 2, 4)
    ]
    assert [line[0] for line in lines] == ["1", "2", "4"]
    assert len({line[2] for line in lines}) == 1


def test_same_bits_after_set_num_threads(rng):
    """numba.set_num_threads below the maximum, in this process."""
    import numba

    x = rng.standard_normal((2000, 300))
    dout = rng.standard_normal((2000, 300))
    results = []
    before = numba.get_num_threads()
    try:
        for n in sorted({1, before}):
            numba.set_num_threads(n)
            with forced_path("parallel"):
                out, cache = fl.batchnorm_forward(x, np.ones(300), np.zeros(300), {"mode": "train"})
                results.append([out, *fl.batchnorm_backward(dout, cache), fl.relu_forward(x)[0]])
    finally:
        numba.set_num_threads(before)
    for a, b in zip(results[0], results[-1]):
        assert bitwise_equal(a, b)


def _twin_kernels() -> list:
    from fastlayers._kernels import affine, batchnorm, relu
    from fastlayers._kernels._twins import TwinKernel

    return [k for m in (affine, batchnorm, relu) for k in vars(m).values() if isinstance(k, TwinKernel)]


@pytest.mark.parametrize("layer", LAYERS, ids=lambda layer: layer.name)
def test_kernels_ignore_and_keep_the_callers_chunk_size(layer, monkeypatch):
    """numba.set_parallel_chunksize in the calling thread: the parallel kernels
    run at numba's default of 0 all the same (a chunk size of 1 made ReLU's
    loop over elements 78x slower) and the caller's setting is back after."""
    import numba

    inputs = layer.inputs(np.random.default_rng(5), (300, 90, 40) if layer.family == "affine" else (300, 90),
                          "float64")
    with forced_path("parallel"):
        expected = _outputs(layer.function("fastlayers")(*layer.call_args("fastlayers", inputs)))
    seen: list[int] = []
    for kernel in _twin_kernels():
        def recording(*args, _run=kernel.parallel):
            seen.append(numba.get_parallel_chunksize())
            return _run(*args)

        monkeypatch.setattr(kernel, "parallel", recording)
    before = numba.set_parallel_chunksize(3)
    try:
        with forced_path("parallel"):
            got = _outputs(layer.function("fastlayers")(*layer.call_args("fastlayers", inputs)))
        assert numba.get_parallel_chunksize() == 3
    finally:
        numba.set_parallel_chunksize(before)
    assert seen and set(seen) == {0}
    assert len(got) == len(expected) > 0
    for a, b in zip(got, expected):
        assert bitwise_equal(a, b)


def test_float32_batchnorm_large_mean_matches_float64():
    """x = 1e4 + noise(std 1): float64 accumulation keeps float32 within 1e-5."""
    rng = np.random.default_rng(5)
    x32 = (1e4 + rng.standard_normal((2048, 64))).astype(np.float32)
    gamma, beta = np.ones(64, np.float32), np.zeros(64, np.float32)
    dout = rng.standard_normal((2048, 64)).astype(np.float32)
    x64 = x32.astype(np.float64)
    out64, cache64 = ref.batchnorm_forward(x64, gamma.astype(np.float64), beta.astype(np.float64), {"mode": "train"})
    grads64 = ref.batchnorm_backward(dout.astype(np.float64), cache64)
    seed_out32, _ = ref.batchnorm_forward(x32, gamma, beta, {"mode": "train"})
    for path in ("serial", "parallel"):
        with forced_path(path):
            out32, cache = fl.batchnorm_forward(x32, gamma, beta, {"mode": "train"})
            grads32 = fl.batchnorm_backward(dout, cache)
        assert normwise_error(out32, out64) <= 1e-5
        for ours, exact in zip(grads32, grads64):
            assert normwise_error(ours, exact) <= 1e-5
    # The seed's float32 arithmetic misses by orders of magnitude (why we accumulate in float64).
    assert normwise_error(seed_out32, out64) > 1e-3


@pytest.mark.parametrize("n", [1, 7, 8, 45, 517, 4099])
@pytest.mark.parametrize("path", ["serial", "parallel"])
def test_batchnorm_variance_has_two_pass_quality(n, path):
    """x = 1e8 + noise(std 1) in float64: E[x^2] - E[x]^2 would lose every digit
    (x^2 ~ 1e16, so its rounding alone is ~1); the blocks' two-pass statistics,
    merged with Chan's formula, keep the variance to 1e-7. Row counts cover
    whole eight-row blocks, leftover rows, and parts of unequal size."""
    rng = np.random.default_rng(n)
    x = 1e8 + rng.standard_normal((n, 5))
    x[:, 4] = 1e8  # a constant feature: variance exactly 0 in exact arithmetic
    with forced_path(path):
        _, cache = fl.batchnorm_forward(x, np.ones(5), np.zeros(5), {"mode": "train"})
    exact_var = np.var(x - 1e8, axis=0)  # x - 1e8 is exact here, and small
    np.testing.assert_allclose(cache.mean - 1e8, np.mean(x - 1e8, axis=0), rtol=0, atol=1e-7)
    np.testing.assert_allclose(cache.var[:4], exact_var[:4], rtol=1e-7, atol=1e-12)
    assert cache.var[4] == 0.0


@pytest.mark.parametrize("n", [1, 7, 8, 45, 517, 4099])
@pytest.mark.parametrize("path", ["serial", "parallel", "one rank"])
def test_batchnorm_of_a_constant_beyond_1e154_has_zero_variance(n, path):
    """A constant float64 column of 2**520 (3.4e156, whose sums are exact):
    the square of its mean overflows, and Chan's merge into an empty
    accumulator must not multiply that Inf by 0 (it gave a NaN variance,
    and NaN outputs, where the seed page gives 0 and beta). "one rank" is
    the synchronised path, whose ranks' merge is Chan's too."""
    x = np.full((n, 3), 2.0**520)
    x[:, 1] = -(2.0**600)
    gamma, beta = np.ones(3), np.array([0.5, -2.0, 0.0])
    comm = SingleProcessComm() if path == "one rank" else None
    with forced_path(None if comm else path):
        out, cache = fl.batchnorm_forward(x, gamma, beta, {"mode": "train"}, comm=comm)
        grads = fl.batchnorm_backward(np.ones_like(x), cache)
    out_ref, cache_ref = ref.batchnorm_forward(x, gamma, beta, {"mode": "train"})
    np.testing.assert_array_equal(cache.var, 0.0)
    np.testing.assert_array_equal(cache.mean, x[0])
    np.testing.assert_array_equal(out, out_ref)
    np.testing.assert_array_equal(out, np.broadcast_to(beta, x.shape))
    dx, dgamma, dbeta = grads
    dx_ref, dgamma_ref, dbeta_ref = ref.batchnorm_backward(np.ones_like(x), cache_ref)
    np.testing.assert_array_equal(dgamma, dgamma_ref)
    np.testing.assert_array_equal(dbeta, dbeta_ref)
    # dx is 0 in exact arithmetic; the seed's closed form leaves 3e-13 to 1.4e-11 of rounding.
    assert np.isfinite(dx).all() and np.abs(dx).max() <= max(np.abs(dx_ref).max(), 1e-12)


@pytest.mark.parametrize("n", [1, 8, 45, 517])
@pytest.mark.parametrize("d", [3, 2048])  # 2048: the column stripes on the parallel path
@pytest.mark.parametrize("path", ["serial", "parallel"])
def test_float32_constant_columns_far_from_zero_give_beta(n, d, path):
    """Constant float32 columns of 1e9, -3e7 and 2**100: variance 0, so
    every output is beta exactly (each element's x - mean is 0). The
    normalise folded into ``x * scale + (beta - mean * scale)`` would give
    beta plus the rounding of mean * scale (scale = 1/sqrt(eps), 316 here),
    far beyond float32's: BENCHMARKS.md, session 23."""
    x = np.empty((n, d), np.float32)
    x[:, 0::3], x[:, 1::3], x[:, 2::3] = 1e9, -3e7, 2.0**100
    gamma = np.ones(d, np.float32)
    beta = np.resize(np.array([0.5, -2.25, 3.0], np.float32), d)
    with forced_path(path):
        out, cache = fl.batchnorm_forward(x, gamma, beta, {"mode": "train"})
        dx, dgamma, dbeta = fl.batchnorm_backward(np.ones_like(x), cache)
    np.testing.assert_array_equal(cache.var, 0.0)
    np.testing.assert_array_equal(out, np.broadcast_to(beta, x.shape))
    np.testing.assert_array_equal(dgamma, 0.0)
    np.testing.assert_array_equal(dbeta, np.float32(n))
    np.testing.assert_array_equal(dx, 0.0)


@pytest.mark.parametrize("n", [2, 7, 8, 45, 517])
@pytest.mark.parametrize("path", ["serial", "parallel"])
def test_batchnorm_beyond_1e154_computes_as_in_the_normal_range(n, path):
    """Features of magnitude 1e155 to 3e160 (means whose squares overflow)
    give the bits of the same features scaled by 2**-512 into the normal
    range, where the rest of the suite holds the kernels to the seed page:
    with eps = 0 batch norm commutes with a power-of-two scaling, and so do
    the kernels' roundings (session 15's tree gave NaNs here)."""
    rng = np.random.default_rng(n)
    x = np.empty((n, 3))
    x[:, 0] = 1e155 * (1 + 1e-3 * rng.standard_normal(n))
    x[:, 1] = 2e154 + np.where(np.arange(n) % 2 == 0, -1e152, 1e152)
    x[:, 2] = -3e160 + 1e150 * rng.standard_normal(n)
    dout = rng.standard_normal((n, 3))
    gamma, beta = np.array([1.0, 2.0, -0.5]), np.array([0.0, 1.0, 3.0])
    results = []
    for scale in (1.0, 2.0**-512):
        with forced_path(path):
            out, cache = fl.batchnorm_forward(x * scale, gamma, beta, {"mode": "train", "eps": 0.0})
            dx, dgamma, dbeta = fl.batchnorm_backward(dout, cache)
        results.append((out, dx * scale, dgamma, dbeta))  # dx goes as 1 / scale
    assert all(np.isfinite(a).all() for a in results[0])
    for huge, normal in zip(*results):
        assert bitwise_equal(huge, normal)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_values_propagate_like_the_reference(bad):
    rng = np.random.default_rng(9)
    x = rng.standard_normal((50, 6))
    x[7, 2] = bad
    dout = rng.standard_normal((50, 6))
    dout[3, 4] = bad
    gamma, beta = np.ones(6), np.zeros(6)
    with np.errstate(all="ignore"):
        out_ref, cache_ref = ref.batchnorm_forward(x, gamma, beta, {"mode": "train"})
        grads_ref = ref.batchnorm_backward(dout, cache_ref)
        affine_ref = ref.affine_forward(x, rng.standard_normal((6, 3)), np.zeros(3))
    out, cache = fl.batchnorm_forward(x, gamma, beta, {"mode": "train"})
    grads = fl.batchnorm_backward(dout, cache)
    affine = fl.affine_forward(*affine_ref[1])
    # NaN, +Inf and -Inf at exactly the reference's places, in every output.
    for ours, theirs in zip([out, *grads, affine[0]], [out_ref, *grads_ref, affine_ref[0]]):
        np.testing.assert_array_equal(np.isnan(ours), np.isnan(theirs))
        np.testing.assert_array_equal(np.isposinf(ours), np.isposinf(theirs))
        np.testing.assert_array_equal(np.isneginf(ours), np.isneginf(theirs))


def _rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="reads RSS from /proc (Linux)")
def test_repeated_calls_leave_memory_flat():
    rng = np.random.default_rng(2)
    cases = [(layer, layer.inputs(rng, (64, 100, 10) if layer.family == "affine" else (64, 100), "float64"))
             for layer in LAYERS]

    def run(times: int) -> None:
        for _ in range(times):
            for layer, inputs in cases:
                layer.function("fastlayers")(*layer.call_args("fastlayers", inputs))

    run(300)  # warm up: compile, allocator pools
    before = _rss_bytes()
    run(3000)
    grown = _rss_bytes() - before
    # 3000 rounds allocate ~1 GB in total; a leak of even one output per round would show.
    assert grown < 16 * 2**20, f"RSS grew by {grown / 2**20:.1f} MiB"


def test_zero_eps_constant_feature_divides_like_numpy():
    """var + eps = 0: IEEE division (Inf, then NaN) as in the reference, never ZeroDivisionError."""
    x = np.array([[1.0, 2.0], [1.0, 3.0]])
    params, params_ref = {"mode": "train", "eps": 0.0}, {"mode": "train", "eps": 0.0}
    for path in ("serial", "parallel"):
        with forced_path(path):
            out, cache = fl.batchnorm_forward(x, np.ones(2), np.zeros(2), dict(params))
            grads = fl.batchnorm_backward(np.ones((2, 2)), cache)
        with np.errstate(all="ignore"):
            out_ref, cache_ref = ref.batchnorm_forward(x, np.ones(2), np.zeros(2), dict(params_ref))
            grads_ref = ref.batchnorm_backward(np.ones((2, 2)), cache_ref)
        for ours, theirs in zip([out, *grads], [out_ref, *grads_ref]):
            np.testing.assert_array_equal(np.isnan(ours), np.isnan(theirs))
            np.testing.assert_array_equal(np.isinf(ours), np.isinf(theirs))


@pytest.mark.parametrize("layer", ["tbb", "workqueue"])  # omp needs the system's libgomp
def test_threading_layer_the_user_asks_for(layer):
    """NUMBA_THREADING_LAYER wins over fastlayers' choice, tbb included (its
    library comes from the tbb wheel, which numba finds only once loaded)."""
    if layer == "tbb" and fl.threading_layer() != "tbb":
        pytest.skip("the tbb wheel is not installed on this platform")
    script = ("import numpy as np, fastlayers as fl; "
              "x = np.linspace(-1, 1, 1 << 18).reshape(512, 512); "
              "assert np.array_equal(fl.relu_forward(x)[0], np.maximum(x, 0)); "
              "print(fl.threading_layer())")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "NUMBA_THREADING_LAYER": layer})
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [layer]
