"""Keeping a long process's heap from growing with the number of files it has read.

Two measures: the pool setting reaches every process (the driver through this package's import, Ray workers
through `pipeline.ray_runtime.WORKER_ENV`); the release runs at the end of every stage (`stage_memory()`),
after each task a stage runs in the driver (`releasing_map`), after each file in the ingest's actors, and
between the shards or work files of the loops that read many of them (final shards, the audit):

- **pyarrow allocates from the system allocator** (glibc malloc), not its bundled mimalloc. mimalloc keeps
  freed pages in per-thread heaps for reuse, and Arrow's reader threads leave each parquet file's buffers in
  a different one, so a process that reads many sidecars holds more the more files it read although Arrow's
  own count stays a few MB: the audit's accounting over 4 vs 31 training shards went 33 -> 122 vs 34 -> 150 MB
  anonymous with mimalloc and 33 -> 93 vs 34 -> 94 MB with the system pool (pool peak 6.5 / 7.8 MB both
  times). Arrow's C++ side picks its default pool once, from `ARROW_DEFAULT_MEMORY_POOL`, when pyarrow is
  imported, and `pa.set_memory_pool` reaches only the Python API's allocations (masking then audit over
  627k documents peaked at 177 / 196 MB with it against 146 / 174 MB with the variable), so importing the
  `common` package sets the variable (`prefer_system_arrow_pool`), and every package of the project imports
  `common` before anything imports pyarrow. A value already set is the user's choice and is kept; Ray
  workers get it through `pipeline.ray_runtime.WORKER_ENV`; a program that imported pyarrow before this
  project still gets the Python-side switch from `stage_memory()`.
- **Long-lived per-document tables in their own mappings** (`table_array`), outside the heap that the
  stage's short-lived arrays fragment.
- **`release_memory()`** at the end of a stage (and after each file in a long-lived actor): glibc's
  `malloc_trim(0)` and the pool's `release_unused()` hand freed heap back to the OS, so the next stage in
  the same process (`glm-corpus demo`, a benchmark's chain) starts from what is live, not from the
  previous stage's peak: masking over 627k documents ended at 144 MB anonymous, 93 MB after the release.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import gc
import mmap
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

import numpy as np

T = TypeVar("T")
R = TypeVar("R")

ARROW_POOL_ENV = "ARROW_DEFAULT_MEMORY_POOL"
ARROW_POOL = "system"
"""What `use_system_arrow_pool` selects, and what Ray workers get in `ARROW_POOL_ENV` (pipeline.ray_runtime)."""


def prefer_system_arrow_pool() -> None:
    """Set `ARROW_DEFAULT_MEMORY_POOL=system` unless it is set: effective if pyarrow is not imported yet."""
    os.environ.setdefault(ARROW_POOL_ENV, ARROW_POOL)


def use_system_arrow_pool() -> None:
    """Make glibc malloc the default pool of pyarrow's Python API, unless `ARROW_DEFAULT_MEMORY_POOL` names
    another. Buffers allocated earlier from another pool keep it (Arrow frees each buffer to its own pool)."""
    if os.environ.get(ARROW_POOL_ENV, ARROW_POOL) != ARROW_POOL:
        return
    import pyarrow as pa

    if pa.default_memory_pool().backend_name != ARROW_POOL:
        pa.set_memory_pool(pa.system_memory_pool())


def table_array(shape: int | tuple[int, ...], dtype: Any) -> np.ndarray:
    """A zeroed array in its own anonymous mapping, for a table that lives as long as its stage (per-document
    lengths, offsets, ids, permutations).

    glibc serves big allocations by mmap only until the first such block is freed; from then on it raises its
    threshold to that block's size and serves later arrays from the heap. A long-lived table placed there pins
    the heap around it, so the freed blocks of the stage's many short-lived arrays stay with the process:
    `malloc_trim` can return only whole free pages, and a table sits in the middle. In its own mapping it
    leaves the heap to short-lived arrays (and goes back to the OS whole when dropped)."""
    dtype = np.dtype(dtype)
    count = int(np.prod(shape))
    if count * dtype.itemsize < TABLE_MMAP_MIN:
        return np.zeros(shape, dtype)
    buffer = mmap.mmap(-1, count * dtype.itemsize)
    return np.frombuffer(buffer, dtype=dtype, count=count).reshape(shape)


TABLE_MMAP_MIN = 1 << 20
"""Below this many bytes `table_array` uses a plain numpy allocation (a mapping per tiny table is waste)."""


def release_memory() -> None:
    """Return freed heap to the OS: glibc `malloc_trim(0)` and pyarrow's pool `release_unused()`.

    Cheap (milliseconds). Does nothing where glibc is absent.
    """
    if "pyarrow" in sys.modules:
        sys.modules["pyarrow"].default_memory_pool().release_unused()
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)


@contextlib.contextmanager
def stage_memory() -> Iterator[None]:
    """Around a stage's work: the system Arrow pool inside, freed memory handed back after (also on error)."""
    use_system_arrow_pool()
    try:
        yield
    finally:
        gc.collect()  # cycles (Arrow tables held by tracebacks, say) before the trim, or it frees less
        release_memory()


def releasing_map(function: Callable[[T], R], items: Iterable[T]) -> Iterator[R]:
    """`map` in this process that hands freed heap back after each call (`release_memory`).

    For a stage that runs its tasks one after another in the driver (global dedup, final shards and masking
    below their Ray thresholds): the heap each task leaves freed but fragmented would otherwise pile up over
    hundreds of tasks. Masking over 670k documents (31 training shards) in one process: the heap between
    shards crept 130 -> 146 MB without it, and the stage's peak fell 143 -> 133 MB with it."""
    for item in items:
        result = function(item)
        release_memory()
        yield result


_LIBC: list[Any] = []


def _libc() -> Any:
    if not _LIBC:
        lib = None
        if sys.platform.startswith("linux"):
            try:
                lib = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
                lib.malloc_trim  # noqa: B018 - musl has no malloc_trim
            except (OSError, AttributeError):
                lib = None
        _LIBC.append(lib)
    return _LIBC[0]
