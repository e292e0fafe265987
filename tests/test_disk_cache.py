"""numba's on-disk cache under processes that compile at the same time."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from fastlayers._kernels import _disk_cache

from conftest import cached_dispatchers

# One kernel of the package's kind, cached beside its module file.
KERNEL_MODULE = """
from fastlayers._kernels._disk_cache import cached_njit


@cached_njit()
def doubled(x):
    return x * 2
"""

# A process that compiles doubled() for one dtype, its cache save forced
# into the interleaving that loses a variant without the lock: both
# processes read the index before either writes (a barrier of files, which
# gives up after 2 s), then "a" writes its index first and its data file
# last, "b" both in between. Under the lock "a" holds the lock through the
# barrier, which gives up, and "b" reads the index only after "a" saved.
COMPILE_DURING_THE_OTHER = """
import os, sys, time
from numba.core import caching

role, dtype, here = sys.argv[1], sys.argv[2], sys.argv[3]
other = {"a": "b", "b": "a"}[role]
saving = []
save_overload = caching.Cache.save_overload
load_index = caching.IndexDataCacheFile._load_index
save_index = caching.IndexDataCacheFile._save_index
save_data = caching.IndexDataCacheFile._save_data


def flagged_save_overload(self, sig, data):
    saving.append(True)
    try:
        return save_overload(self, sig, data)
    finally:
        saving.pop()


def load_index_then_wait(self):
    overloads = load_index(self)
    if saving:
        open(os.path.join(here, "read-" + role), "w").close()
        deadline = time.monotonic() + 2.0
        while not os.path.exists(os.path.join(here, "read-" + other)) and time.monotonic() < deadline:
            time.sleep(0.01)
    return overloads


def save_index_in_turn(self, overloads):
    time.sleep(0.0 if role == "a" else 0.25)
    save_index(self, overloads)


def save_data_in_turn(self, name, data):
    time.sleep(0.5 if role == "a" else 0.0)
    save_data(self, name, data)


caching.Cache.save_overload = flagged_save_overload
caching.IndexDataCacheFile._load_index = load_index_then_wait
caching.IndexDataCacheFile._save_index = save_index_in_turn
caching.IndexDataCacheFile._save_data = save_data_in_turn
sys.path.insert(0, here)
import numpy as np
from kernel_module import doubled

print(doubled(np.arange(3, dtype=dtype)).tolist())
"""

LOAD_BOTH = """
import sys
import numpy as np
sys.path.insert(0, sys.argv[1])
from kernel_module import doubled

print([doubled(np.arange(3, dtype=dtype)).tolist() for dtype in ("float32", "float64")],
      sum(doubled.stats.cache_hits.values()))
"""


@pytest.mark.skipif(_disk_cache.fcntl is None, reason="no fcntl: saves run as numba's own (see _disk_cache)")
def test_every_cached_kernel_saves_under_the_lock():
    dispatchers = cached_dispatchers()
    assert len(dispatchers) >= 25, sorted(dispatchers)
    unlocked = [name for name, dispatcher in dispatchers.items()
                if type(dispatcher._cache._cache_file) is not _disk_cache.LockedIndexDataCacheFile]
    assert unlocked == []


@pytest.mark.skipif(_disk_cache.fcntl is None, reason="no fcntl: saves run as numba's own (see _disk_cache)")
def test_processes_that_compile_one_kernel_at_once_leave_a_cache_every_process_loads(tmp_path: Path):
    """Two processes compile a float32 and a float64 variant of one kernel
    with their saves interleaved as in numba issue #4807. Without the lock
    both take data file 1 and a third process gets numba's "can't unbox
    array" TypeError for one dtype (BENCHMARKS.md, session 20); with it,
    the third process loads both variants and computes both right."""
    (tmp_path / "kernel_module.py").write_text(KERNEL_MODULE)
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "cache")}
    compiling = [subprocess.Popen([sys.executable, "-c", COMPILE_DURING_THE_OTHER, role, dtype, str(tmp_path)],
                                  env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for role, dtype in (("a", "float32"), ("b", "float64"))]
    for process in compiling:
        stdout, stderr = process.communicate(timeout=300)
        assert process.returncode == 0, stderr
        assert stdout.split() == ["[0.0,", "2.0,", "4.0]"], stdout
    assert (tmp_path / "read-a").exists() and (tmp_path / "read-b").exists()  # both saved through the barrier
    loaded = subprocess.run([sys.executable, "-c", LOAD_BOTH, str(tmp_path)], check=False, env=env,
                            capture_output=True, text=True, timeout=300)
    assert loaded.returncode == 0, loaded.stderr
    assert loaded.stdout.split() == ["[[0.0,", "2.0,", "4.0],", "[0.0,", "2.0,", "4.0]]", "2"], loaded.stdout
    data_files = sorted(path.name.rsplit(".", 2)[1] for path in (tmp_path / "cache").rglob("*.nbc"))
    assert data_files == ["1", "2"]
