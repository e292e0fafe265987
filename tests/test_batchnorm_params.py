"""bn_param semantics: defaults, rebinding, test mode after training, the cache mapping."""

from __future__ import annotations

import numpy as np
import pytest

import fastlayers as fl
from fastlayers import reference as ref

from conftest import normwise_error


def test_defaults_match_reference(rng):
    x = rng.standard_normal((20, 6))
    gamma, beta = rng.standard_normal(6), rng.standard_normal(6)
    params, params_ref = {"mode": "train"}, {"mode": "train"}
    out, _ = fl.batchnorm_forward(x, gamma, beta, params)
    out_ref, _ = ref.batchnorm_forward(x, gamma, beta, params_ref)
    assert normwise_error(out, out_ref) <= 1e-12
    assert set(params) == {"mode", "running_mean", "running_var"}
    # momentum 0.9 from zeros: running = 0.1 * sample
    np.testing.assert_allclose(params["running_mean"], 0.1 * x.mean(0), rtol=1e-12)
    np.testing.assert_allclose(params["running_var"], 0.1 * x.var(0), rtol=1e-12)


def test_eps_and_momentum_are_used(rng):
    x = rng.standard_normal((10, 3))
    p = {"mode": "train", "eps": 0.5, "momentum": 0.25}
    p_ref = dict(p)
    out, _ = fl.batchnorm_forward(x, np.ones(3), np.zeros(3), p)
    out_ref, _ = ref.batchnorm_forward(x, np.ones(3), np.zeros(3), p_ref)
    assert normwise_error(out, out_ref) <= 1e-12
    np.testing.assert_allclose(p["running_var"], p_ref["running_var"], rtol=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_running_arrays_rebound_not_modified(rng, dtype):
    x = rng.standard_normal((12, 4)).astype(dtype)
    running_mean = rng.standard_normal(4).astype(dtype)
    running_var = rng.random(4).astype(dtype)
    saved = running_mean.copy(), running_var.copy()
    params = {"mode": "train", "running_mean": running_mean, "running_var": running_var}
    fl.batchnorm_forward(x, np.ones(4, dtype), np.zeros(4, dtype), params)
    assert params["running_mean"] is not running_mean
    assert params["running_var"] is not running_var
    np.testing.assert_array_equal(running_mean, saved[0])
    np.testing.assert_array_equal(running_var, saved[1])
    assert params["running_mean"].dtype == dtype


def test_training_then_test_mode_matches_reference(path, rng):
    gamma, beta = rng.standard_normal(7), rng.standard_normal(7)
    params, params_ref = {"mode": "train", "momentum": 0.8}, {"mode": "train", "momentum": 0.8}
    for step in range(6):
        x = rng.standard_normal((30, 7)) * (step + 1) + step
        fl.batchnorm_forward(x, gamma, beta, params)
        ref.batchnorm_forward(x, gamma, beta, params_ref)
    for key in ("running_mean", "running_var"):
        assert normwise_error(params[key], params_ref[key]) <= 1e-12
    params["mode"] = params_ref["mode"] = "test"
    x = rng.standard_normal((11, 7)) * 3
    out, cache = fl.batchnorm_forward(x, gamma, beta, params)
    out_ref, _ = ref.batchnorm_forward(x, gamma, beta, params_ref)
    assert cache is None
    assert normwise_error(out, out_ref) <= 1e-12


def test_test_mode_without_running_stats_sets_zeros(rng):
    x = rng.standard_normal((5, 3)).astype(np.float32)
    params = {"mode": "test"}
    out, _ = fl.batchnorm_forward(x, np.ones(3, np.float32), np.zeros(3, np.float32), params)
    for key in ("running_mean", "running_var"):
        assert params[key].dtype == np.float32
        np.testing.assert_array_equal(params[key], np.zeros(3))
    np.testing.assert_allclose(out, x / np.sqrt(np.float32(1e-5)), rtol=1e-6)


def test_cache_reads_as_seed_mapping(rng):
    x = rng.standard_normal((9, 5))
    gamma = rng.standard_normal(5)
    _, cache = fl.batchnorm_forward(x, gamma, np.zeros(5), {"mode": "train"})
    _, cache_ref = ref.batchnorm_forward(x, gamma, np.zeros(5), {"mode": "train"})
    assert set(cache) == set(cache_ref) and len(cache) == len(cache_ref)
    for key, expected in cache_ref.items():
        assert normwise_error(cache[key], expected) <= 1e-12
        assert normwise_error(cache.get(key), expected) <= 1e-12
    assert cache["gamma"] is gamma
    assert cache.x is x  # a reference, not a copy
    with pytest.raises(KeyError):
        cache["missing"]


def test_reference_backward_accepts_our_cache(rng):
    """Code written against the seed's dict cache keeps working with ours."""
    x = rng.standard_normal((9, 5))
    dout = rng.standard_normal((9, 5))
    _, cache = fl.batchnorm_forward(x, np.ones(5), np.zeros(5), {"mode": "train"})
    _, cache_ref = ref.batchnorm_forward(x, np.ones(5), np.zeros(5), {"mode": "train"})
    for ours, theirs in zip(ref.batchnorm_backward(dout, cache), ref.batchnorm_backward(dout, cache_ref)):
        assert normwise_error(ours, theirs) <= 1e-12


def test_single_row_is_finite():
    out, cache = fl.batchnorm_forward(np.array([[1.0, -2.0, 3.0]]), np.ones(3), np.full(3, 0.5), {"mode": "train"})
    np.testing.assert_array_equal(out, np.full((1, 3), 0.5))
    dx, dgamma, dbeta = fl.batchnorm_backward(np.ones((1, 3)), cache)
    assert np.all(np.isfinite(dx))
