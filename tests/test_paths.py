"""The serial and the parallel twin of every kernel give bitwise the same results."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

import fastlayers as fl
from fastlayers import layers, sandwiches
from fastlayers._kernels import _twins
from fastlayers._kernels._twins import (
    SERIAL_MERGE_MAX,
    SPLIT_MIN_COLUMNS,
    forced_path,
    n_column_splits,
    n_column_stripes,
    n_row_parts,
    parted_work,
)
from fastlayers._kernels.batchnorm import (
    BACKWARD_THRESHOLD,
    NORMALIZE_THRESHOLD,
    STATS_THRESHOLD,
    _batchnorm_backward,
    _batchnorm_backward_stripes,
    _batchnorm_normalize,
    _batchnorm_stats,
    _batchnorm_train_stripes,
)
from fastlayers._table import LAYERS

from conftest import DTYPES, bitwise_equal, with_layout


def _arrays(result):
    if isinstance(result, np.ndarray):
        return [result]
    arrays = [r for r in result if isinstance(r, np.ndarray)]
    if len(result) == 2 and hasattr(result[1], "keys"):  # batch-norm cache
        arrays += [np.asarray(result[1][k]) for k in result[1]]
    return arrays


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1000, 300), (257, 129), (3, 70000)])
@pytest.mark.parametrize("layer", LAYERS, ids=lambda layer: layer.name)
def test_serial_equals_parallel(layer, shape, dtype):
    if layer.family == "affine":
        shape = (shape[0], shape[1] // 3, 200)
    _assert_paths_agree(layer, shape, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layer", LAYERS, ids=lambda layer: layer.name)
def test_serial_equals_parallel_where_the_merges_run_in_parallel(layer, dtype):
    """Above SERIAL_MERGE_MAX row parts x columns the parallel twins merge
    their per-part partials in a parallel loop, below it on the calling
    thread: the same bits either way. 16 row parts x 4200 columns (the
    affine layers' M) is above it."""
    n, width = 544, 4200
    assert n_row_parts(n) * width > SERIAL_MERGE_MAX
    _assert_paths_agree(layer, (n, 8, width) if layer.family == "affine" else (n, width), dtype)


def _assert_paths_agree(layer, shape, dtype):
    inputs = layer.inputs(np.random.default_rng(7), shape, dtype)
    results = {}
    for path in ("serial", "parallel"):
        with forced_path(path):
            results[path] = _arrays(layer.function("fastlayers")(*layer.call_args("fastlayers", inputs)))
    assert len(results["serial"]) == len(results["parallel"]) > 0
    for serial, parallel in zip(results["serial"], results["parallel"]):
        assert bitwise_equal(serial, parallel)


def test_forced_path_rejects_unknown():
    with pytest.raises(ValueError, match="path"):
        with forced_path("gpu"):
            pass


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(64, 100, 10), (300, 257, 7), (0, 5, 3), (7, 0, 4), (5, 6, 0)])
def test_affine_shortcut_equals_general_path(path, rng, shape, dtype):
    """Plain C-contiguous 2-D operands of one dtype skip the affine layer's
    general checks; a 3-D x and a list cache go the general way, through the
    same kernels, and must give the same bits."""
    n, d, m = shape
    x = rng.standard_normal((n, d)).astype(dtype)
    w = rng.standard_normal((d, m)).astype(dtype)
    b = rng.standard_normal(m).astype(dtype)
    dout = rng.standard_normal((n, m)).astype(dtype)
    out, cache = fl.affine_forward(x, w, b)
    general_out, _ = fl.affine_forward(x.reshape(n, 1, d), w, b)
    assert bitwise_equal(out, general_out)
    assert cache[0] is x and cache[1] is w and cache[2] is b
    gradients = fl.affine_backward(dout, cache)
    general = fl.affine_backward(dout, list(cache))
    for name, shortcut, expected in zip(("dx", "dw", "db"), gradients, general):
        assert bitwise_equal(shortcut, expected), name


@pytest.mark.parametrize("vectors", ["C", "strided"])  # gamma, beta and the running statistics
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(64, 100), (1, 7), (33, 5), (300, 200), (300, 300), (300, 500)])
def test_batchnorm_shortcut_equals_general_path(path, rng, shape, dtype, vectors, monkeypatch):
    """A small train-mode call with plain arrays and a dict skips batch
    norm's general checks; the same call with out= (forward) or dx=
    (backward) goes the general way, through the same kernels, and must
    give the same bits. The shortcut is taken where the serial twins run."""
    taken = []
    for name in ("batchnorm_train_plain", "batchnorm_backward_plain"):
        entry = getattr(layers, name)
        monkeypatch.setattr(layers, name, lambda *args, entry=entry, name=name: (taken.append(name), entry(*args))[1])
    x = (rng.standard_normal(shape) * 3 + 1).astype(dtype)
    gamma, beta, running_mean = (with_layout(rng.standard_normal(shape[1]).astype(dtype), vectors) for _ in range(3))
    running_var = with_layout(rng.random(shape[1]).astype(dtype), vectors)
    dout = rng.standard_normal(shape).astype(dtype)
    params = {"mode": "train", "eps": 1e-3, "momentum": 0.8, "running_mean": running_mean, "running_var": running_var}
    general_params = dict(params)
    out, cache = fl.batchnorm_forward(x, gamma, beta, params)
    general_out, general_cache = fl.batchnorm_forward(x, gamma, beta, general_params, out=np.empty_like(x))
    gradients = fl.batchnorm_backward(dout, cache)
    general = fl.batchnorm_backward(dout, general_cache, dx=np.empty_like(x))
    serial, itemsize = path == "serial", x.dtype.itemsize
    assert taken == ((["batchnorm_train_plain"] if serial and x.size < NORMALIZE_THRESHOLD[itemsize] else [])
                     + (["batchnorm_backward_plain"] if serial and x.size < BACKWARD_THRESHOLD[itemsize] else []))
    assert cache.x is x and cache.gamma is gamma and cache.beta is beta
    assert bitwise_equal(out, general_out)
    for key in ("running_mean", "running_var"):
        assert bitwise_equal(params[key], general_params[key]), key
    for name, shortcut, expected in zip(("dx", "dgamma", "dbeta"), gradients, general):
        assert bitwise_equal(shortcut, expected), name


def as_if_numba_had(monkeypatch, threads):
    """Make the kernels' dispatch see ``threads`` numba threads (the
    threading layer's getter replaced; its chunk-size calls kept)."""
    _, chunk_size, set_chunk_size = _twins._layer_calls or _twins._bind_layer_calls()
    monkeypatch.setattr(_twins, "_layer_calls", (lambda: threads, chunk_size, set_chunk_size))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape, n_parts, n_splits", [((32, 8192), 1, 8), ((40, 4600), 1, 4), ((64, 4096), 2, 1)])
def test_batchnorm_splits_a_single_row_part_by_columns(rng, monkeypatch, shape, n_parts, n_splits, dtype):
    """Fewer than 64 rows make one row part, which a loop over the parts
    would run on one thread: its columns are split into ranges of at least
    1024 instead, so the statistics' and the backward's parallel twins run
    above their thresholds, and give the bits of the serial twins over
    whole rows. Several parts are not split. All shapes are above every
    threshold. (The train-mode forward of these short batches runs in
    column stripes instead, which is switched off here: see the next test.)"""
    monkeypatch.setattr(layers, "n_column_stripes", lambda *shape_and_sizes: 0)
    itemsize = np.dtype(dtype).itemsize
    thresholds = (STATS_THRESHOLD[itemsize], BACKWARD_THRESHOLD[itemsize], NORMALIZE_THRESHOLD[itemsize])
    assert shape[0] * shape[1] >= max(thresholds)
    assert (n_row_parts(shape[0]), n_column_splits(n_row_parts(shape[0]), shape[1])) == (n_parts, n_splits)
    taken = []
    for kernel in (_batchnorm_stats, _batchnorm_normalize, _batchnorm_backward):
        for twin in ("serial", "parallel"):
            entry = getattr(kernel, twin)
            monkeypatch.setattr(kernel, twin, lambda *args, entry=entry, name=f"{kernel.name} {twin}": (
                taken.append(name), entry(*args))[1])
    as_if_numba_had(monkeypatch, 2)
    x = (rng.standard_normal(shape) * 3 + 1).astype(dtype)
    dout = rng.standard_normal(shape).astype(dtype)
    gamma, beta = rng.standard_normal(shape[1]).astype(dtype), rng.standard_normal(shape[1]).astype(dtype)
    out, cache = fl.batchnorm_forward(x, gamma, beta, {"mode": "train"})
    gradients = fl.batchnorm_backward(dout, cache)
    assert taken == ["batchnorm_stats parallel", "batchnorm_normalize parallel", "batchnorm_backward parallel"]
    monkeypatch.setattr(layers, "n_column_splits", lambda n_parts, n_features: 1)  # whole rows, one thread
    with forced_path("serial"):
        serial_out, serial_cache = fl.batchnorm_forward(x, gamma, beta, {"mode": "train"})
        serial_gradients = fl.batchnorm_backward(dout, serial_cache)
    for name, value, expected in zip(("out", "mean", "var", "dx", "dgamma", "dbeta"),
                                     (out, cache.mean, cache.var, *gradients),
                                     (serial_out, serial_cache.mean, serial_cache.var, *serial_gradients)):
        assert bitwise_equal(value, expected), name


@pytest.mark.parametrize("relu", [False, True], ids=["batchnorm", "affine_batchnorm_relu"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(5, 2048), (32, 8192), (40, 4600), (77, 3071), (128, 4096), (256, 4096), (300, 2048),
                                   (600, 2048)])
def test_batchnorm_short_batches_run_in_column_stripes(rng, monkeypatch, shape, dtype, relu):
    """A short, wide batch runs its train-mode forward (statistics and
    normalise) in one parallel call, and its backward (reductions and dx)
    in another, a stripe of columns a task: the bits of the two passes
    over row parts (serial and parallel twins), for the output (ReLU'd in
    the sandwich), the statistics, the running ones and the gradients
    (with the affine layer's db in the sandwich, and dx written into dout)."""
    n, d = shape
    itemsize = np.dtype(dtype).itemsize
    as_if_numba_had(monkeypatch, 2)
    monkeypatch.setattr(_twins, "STRIPE_MAX_BYTES", 2 << 20)  # as if a core had 2 MiB of L2
    # Stripes whose x (dout and x for the backward) fits: of 1024 columns in 1 MiB, else of 4 KiB of a row in 2 MiB.
    forward_stripes, backward_stripes = (next((n_stripes for n_stripes, limit in ((d // 1024, 1 << 20),
                                                                                  (d * itemsize // 4096, 2 << 20))
                                               if n_arrays * n * -(-d // n_stripes) * itemsize <= limit), 0)
                                         for n_arrays in (1, 2))
    assert n_column_stripes(n, d, itemsize) == forward_stripes
    assert n_column_stripes(n, d, itemsize, 2) == backward_stripes
    taken = []
    for kernel in (_batchnorm_stats, _batchnorm_normalize, _batchnorm_train_stripes, _batchnorm_backward,
                   _batchnorm_backward_stripes):
        for twin in ("serial", "parallel"):
            entry = getattr(kernel, twin)
            monkeypatch.setattr(kernel, twin, lambda *args, entry=entry, name=f"{kernel.name} {twin}": (
                taken.append(name.replace("batchnorm_", "")), entry(*args))[1])
    x = (rng.standard_normal((n, 3)) * 3 + 1).astype(dtype)
    w = rng.standard_normal((3, d)).astype(dtype)
    pre = x @ w
    dout = rng.standard_normal((n, d)).astype(dtype)
    b, gamma, beta = (rng.standard_normal(d).astype(dtype) for _ in range(3))
    running = {"running_mean": rng.standard_normal(d).astype(dtype), "running_var": rng.random(d).astype(dtype)}

    def train_step():
        params = {"mode": "train", "eps": 1e-3, "momentum": 0.7, **running}
        if relu:
            out, cache = fl.affine_batchnorm_relu_forward(x, w, b, gamma, beta, params)
            gradients = fl.affine_batchnorm_relu_backward(dout, cache)
            cache = cache[1]
        else:
            out, cache = fl.batchnorm_forward(pre, gamma, beta, params)
            gradients = fl.batchnorm_backward(dout, cache)
            in_place = dout.copy()
            fl.batchnorm_backward(in_place, cache, dx=in_place)
            gradients += (in_place,)
        return out, cache.mean, cache.var, params["running_mean"], params["running_var"], *gradients

    results = {}
    with forced_path("parallel"):
        results["parallel"] = train_step()
    assert taken == ((["train_stripes parallel"] if forward_stripes else ["stats parallel", "normalize parallel"])
                     + ["backward_stripes parallel" if backward_stripes else "backward parallel"] * (1 if relu else 2))
    with forced_path("serial"):  # the passes' serial twins: the stripes' serial twins are never called
        results["serial"] = train_step()
    assert not [name for name in taken if "stripes serial" in name]
    monkeypatch.setattr(layers, "n_column_stripes", lambda *shape_and_sizes: 0)
    for path in ("parallel", "serial"):
        with forced_path(path):
            results[path + " by row parts"] = train_step()
    names = ("out", "mean", "var", "running_mean", "running_var", "dx", "dgamma", "dbeta", "dx in place")
    if relu:
        names = ("out", "mean", "var", "running_mean", "running_var", "dx", "dw", "db", "dgamma", "dbeta")
    for path, values in results.items():
        assert len(values) == len(names)
        for name, value, expected in zip(names, values, results["serial by row parts"]):
            assert bitwise_equal(value, expected), (path, name)


def test_column_stripes_where_they_pay(monkeypatch):
    """Stripes of 1024 to 2047 columns while the stripes of the arrays read
    twice (x; dout and x) fit in half a core's L2 (here 2 MiB), else of
    4 KiB to 8 KiB of a row (float64: 512 to 1023 columns) while those fit
    in all of it, as many as the threads or more; else (0) the passes over
    row parts."""
    monkeypatch.setattr(_twins, "STRIPE_MAX_BYTES", 2 << 20)
    for threads, shape, itemsize, expected in [
        (2, (512, 4096), 4, 4), (2, (513, 4096), 4, 0), (2, (128, 4096), 8, 4), (2, (129, 4096), 8, 8),
        (2, (512, 4096), 8, 8), (2, (513, 4096), 8, 0), (2, (85, 3071), 8, 2), (2, (86, 3071), 8, 5),
        (2, (426, 3071), 8, 5), (2, (427, 3071), 8, 0), (2, (341, 3071), 4, 2), (2, (342, 3071), 4, 0),
        (2, (1, 2047), 4, 0), (2, (1, 2048), 4, 2),
        (1, (64, 4096), 4, 0), (4, (64, 4096), 4, 4), (5, (64, 4096), 4, 0), (16, (8, 16384), 8, 16),
        (8, (300, 4096), 8, 8), (9, (300, 4096), 8, 0), (1, (300, 4096), 8, 0),
    ]:
        as_if_numba_had(monkeypatch, threads)
        assert n_column_stripes(*shape, itemsize) == expected, (threads, shape, itemsize)
        # Two arrays (the backward): as one of twice the rows.
        assert n_column_stripes(*shape, itemsize, 2) == n_column_stripes(2 * shape[0], shape[1], itemsize)


def test_column_stripes_follow_the_l2(monkeypatch):
    """With 1 MiB of L2 a core, the stripes stop where half as many rows
    fit: the medium size's backward (dout and x, 256x4096) runs over row
    parts in both dtypes, its forward in stripes."""
    as_if_numba_had(monkeypatch, 2)
    monkeypatch.setattr(_twins, "STRIPE_MAX_BYTES", 1 << 20)
    for shape, itemsize, n_arrays, expected in [
        ((256, 4096), 4, 1, 4), ((257, 4096), 4, 1, 0), ((256, 4096), 8, 1, 8), ((257, 4096), 8, 1, 0),
        ((64, 4096), 8, 1, 4), ((65, 4096), 8, 1, 8), ((256, 4096), 4, 2, 0), ((128, 4096), 4, 2, 4),
        ((256, 4096), 8, 2, 0), ((128, 4096), 8, 2, 8), ((256, 8192), 4, 2, 0), ((64, 8192), 4, 2, 8),
    ]:
        assert n_column_stripes(*shape, itemsize, n_arrays) == expected, (shape, itemsize, n_arrays)


def _fake_cache_dir(root, caches):
    """A directory laid out as Linux's cpu0/cache: (level, type, size) per index."""
    for index, (level, kind, size) in enumerate(caches):
        entry = root / f"index{index}"
        entry.mkdir()
        for name, text in (("level", level), ("type", kind), ("size", size)):
            (entry / name).write_text(text + "\n")
    return str(root)


@pytest.mark.parametrize("caches, expected", [
    ([("1", "Data", "32K"), ("1", "Instruction", "32K"), ("2", "Unified", "1024K"), ("3", "Unified", "32768K")],
     1 << 20),
    ([("1", "Data", "48K"), ("2", "Unified", "2M")], 2 << 20),
    ([("2", "Data", "512K")], 512 << 10),
    ([("1", "Data", "32K"), ("2", "Instruction", "1024K")], _twins.DEFAULT_L2_BYTES),  # no data cache at level 2
    ([("2", "Unified", "lots")], _twins.DEFAULT_L2_BYTES),
    ([("2", "Unified", "0K")], _twins.DEFAULT_L2_BYTES),
    ([], _twins.DEFAULT_L2_BYTES),
], ids=["zen4", "megabytes", "data", "instruction-only", "unreadable", "zero", "none"])
def test_core_l2_bytes_reads_what_linux_reports(tmp_path, caches, expected):
    assert _twins.core_l2_bytes(_fake_cache_dir(tmp_path, caches)) == expected
    assert _twins.core_l2_bytes(str(tmp_path / "missing")) == _twins.DEFAULT_L2_BYTES


def test_a_single_task_takes_the_serial_twin():
    """A single row part too narrow to split is one task, which the
    parallel twin would run on one thread after a launch: ``parted_work``
    counts it as no work, so it stays under every threshold."""
    assert n_column_splits(1, 2 * SPLIT_MIN_COLUMNS - 1) == 1
    assert n_column_splits(1, 2 * SPLIT_MIN_COLUMNS) == 2
    assert n_column_splits(2, 10**6) == 1
    assert parted_work(1, n_column_splits(1, 2 * SPLIT_MIN_COLUMNS - 1), 10**9) == 0
    assert parted_work(1, n_column_splits(1, 2 * SPLIT_MIN_COLUMNS), 10**9) == 10**9
    assert parted_work(2, n_column_splits(2, 10), 10**9) == 10**9


def test_twin_thresholds_by_itemsize(monkeypatch):
    """A kernel with a threshold per itemsize picks it by its first
    argument's dtype; a malformed one is refused."""
    taken = []
    kernel = _batchnorm_normalize
    for twin in ("serial", "parallel"):
        monkeypatch.setattr(kernel, twin, lambda *args, twin=twin: taken.append(twin))
    monkeypatch.setattr(kernel, "threshold", {4: 100, 8: 50})
    as_if_numba_had(monkeypatch, 2)
    for dtype in (np.float32, np.float64):
        kernel(75, np.empty(1, dtype))
    assert taken == ["serial", "parallel"]
    assert kernel.small(75, 4) and not kernel.small(75, 8)
    with pytest.raises(ValueError, match="itemsizes 4 and 8"):
        _twins.TwinKernel(lambda x: x, {8: 1}, "elements")


def test_small_sandwiches_take_the_short_entries(rng, monkeypatch):
    """Small plain calls of the fused sandwiches reach the kernels' short
    entries (test_sandwiches compares their results with the composition
    of the single layers, bit for bit)."""
    taken = []
    for module, name in ((sandwiches, "affine_relu_forward_plain"), (layers, "affine_gradients_plain"),
                         (sandwiches, "affine_forward_plain"), (sandwiches, "batchnorm_gradients_plain"),
                         (sandwiches, "train_plain")):
        entry = getattr(module, name)
        monkeypatch.setattr(module, name, lambda *args, entry=entry, name=name, **kwargs: (
            taken.append(name), entry(*args, **kwargs))[1])
    x, w, b, gamma, beta = (rng.standard_normal(shape) for shape in ((64, 100), (100, 10), 10, 10, 10))
    dout = rng.standard_normal((64, 10))
    out, cache = fl.affine_relu_forward(x, w, b)
    fl.affine_relu_backward(dout, cache)
    params = {"mode": "train", "running_mean": np.zeros(10), "running_var": np.ones(10)}
    out, cache = fl.affine_batchnorm_relu_forward(x, w, b, gamma, beta, params)
    fl.affine_batchnorm_relu_backward(dout, cache)
    assert taken == ["affine_relu_forward_plain", "affine_gradients_plain", "affine_forward_plain", "train_plain",
                     "batchnorm_gradients_plain"]


@pytest.mark.parametrize("shape", [(64, 100), (3, 4, 5), (7,)])
def test_small_relu_calls_take_the_short_entries(rng, shape, monkeypatch):
    """Small C-contiguous ReLU calls reach the short entries, any number of
    dimensions, and give what the general path (a strided view) gives."""
    taken = []
    for name in ("relu_forward_plain", "relu_backward_plain"):
        entry = getattr(layers, name)
        monkeypatch.setattr(layers, name, lambda *args, entry=entry, name=name: (taken.append(name), entry(*args))[1])
    x, dout = rng.standard_normal(shape), rng.standard_normal(shape)
    x[0] = -0.0
    out, cache = fl.relu_forward(x)
    dx = fl.relu_backward(dout, cache)
    assert taken == ["relu_forward_plain", "relu_backward_plain"]
    general_out, general_cache = fl.relu_forward(with_layout(x, "strided"))
    assert bitwise_equal(out, general_out)
    assert bitwise_equal(dx, fl.relu_backward(with_layout(dout, "strided"), general_cache))
    assert taken == ["relu_forward_plain", "relu_backward_plain"]  # the general path took neither


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(64, 100), (300, 600)])
@pytest.mark.parametrize("sandwich", [False, True], ids=["batchnorm", "affine_batchnorm_relu"])
def test_unpickled_cache_gives_the_same_gradients(path, rng, shape, dtype, sandwich):
    """An unpickled cache's arrays carry dtypes equal to, but not the very
    objects of, NumPy's own: the short entries' identity tests send it down
    the general path, whose checks must accept it and give the same bits."""
    n, d = shape
    x = rng.standard_normal((n, d)).astype(dtype)
    gamma, beta = rng.standard_normal(d).astype(dtype), rng.standard_normal(d).astype(dtype)
    dout = rng.standard_normal((n, d)).astype(dtype)
    if sandwich:
        w = (rng.standard_normal((d, d)) / np.sqrt(d)).astype(dtype)
        _, cache = fl.affine_batchnorm_relu_forward(x, w, beta, gamma, beta, {"mode": "train"})
        backward = fl.affine_batchnorm_relu_backward
    else:
        _, cache = fl.batchnorm_forward(x, gamma, beta, {"mode": "train"})
        backward = fl.batchnorm_backward
    unpickled = pickle.loads(pickle.dumps(cache))
    bn_cache = unpickled[1] if sandwich else unpickled
    assert bn_cache.x.dtype == dtype and bn_cache.x.dtype is not np.dtype(dtype)
    for got, want in zip(backward(dout, unpickled), backward(dout, cache), strict=True):
        assert bitwise_equal(got, want)


def test_twin_rejects_an_unknown_unit():
    from fastlayers._kernels._twins import twin

    def body(x):
        return x

    with pytest.raises(ValueError, match="unit"):
        twin(1 << 16, unit="flops")(body)
