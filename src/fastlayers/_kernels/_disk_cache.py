"""numba's on-disk cache, safe for processes that compile at the same time.

numba saves a compiled variant of a ``cache=True`` function in four steps:
it reads the function's index, takes the first data-file number the index
does not list, writes the index, then writes the data file. Two processes
that compile different variants of one function at once (MPI ranks, a pool
of workers, ``pytest -n`` on a fresh install) can both read the index
before either writes it and take the same number. The index and the data
file written last may then belong to different variants, and every later
process loads one variant's machine code for the other: numba's
``TypeError: can't unbox array``, or a crash (numba issues #4807 and
#10128; reproduced in BENCHMARKS.md, sessions 18 and 20). numba's
maintainers proposed a file lock in #10128; numba 0.68 has none.

Every fastlayers kernel is compiled through ``cached_njit``, whose cache
saves under an exclusive lock on a file beside the cache's own files
(``LOCK_NAME``), and writes the data file before the index: one process at
a time picks a number and writes both files, and no process finds an index
entry whose data file is not there yet. Loading takes no lock: numba writes
each file under a temporary name and renames it into place.

The lock is a POSIX record lock (``fcntl.lockf``): the system drops it
when its process exits, and a child forked during a save does not inherit
it. Where there is no ``fcntl`` (Windows), or the lock file cannot be
opened or locked, saves run as numba's own do.
"""

from __future__ import annotations

import contextlib
import itertools
import os
from collections.abc import Callable, Iterator
from typing import Any

import numba
from numba.core.caching import IndexDataCacheFile

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None

LOCK_NAME = "fastlayers-cache.lock"


@contextlib.contextmanager
def _exclusive(directory: str) -> Iterator[None]:
    """Hold the lock of the cache directory ``directory`` (waiting for it)."""
    try:
        fd = os.open(os.path.join(directory, LOCK_NAME), os.O_RDWR | os.O_CREAT, 0o666)
    except OSError:  # numba found the directory writable; if the lock file is not, save as numba does
        yield
        return
    try:
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX)
        except OSError:  # a file system without record locks (some network mounts): save as numba does
            pass
        yield
    finally:
        os.close(fd)  # releases the lock


class LockedIndexDataCacheFile(IndexDataCacheFile):
    """numba's index and data files of one function, saved under the lock."""

    def save(self, key: Any, data: Any) -> None:
        with _exclusive(self._cache_path):
            overloads = self._load_index()
            data_name = overloads.get(key)
            if data_name is None:
                taken = set(overloads.values())
                data_name = next(name for name in map(self._data_name, itertools.count(1)) if name not in taken)
                self._save_data(data_name, data)
                overloads[key] = data_name
                self._save_index(overloads)
            else:
                self._save_data(data_name, data)


def lock_cache_writes(dispatcher: Any) -> Any:
    """Make ``dispatcher``'s on-disk cache save under the lock; returns it.
    A dispatcher without numba's usual index and data files, or on a
    system without ``fcntl``, is left as it is."""
    cache_file = getattr(getattr(dispatcher, "_cache", None), "_cache_file", None)
    if fcntl is not None and type(cache_file) is IndexDataCacheFile:
        cache_file.__class__ = LockedIndexDataCacheFile
    return dispatcher


def cached_njit(**options: Any) -> Callable[[Callable[..., Any]], Any]:
    """``numba.njit(cache=True, **options)``, its cache saved under the lock."""

    def compile_cached(func: Callable[..., Any]) -> Any:
        return lock_cache_writes(numba.njit(cache=True, **options)(func))

    return compile_cached
