"""common.memory: stages allocate Arrow buffers from the system pool (unless the user chose one), and hand
freed heap back after their work, also when it fails.

Each check runs in a fresh interpreter: pyarrow fixes its default pool on first use, and this test session
has long since used it.
"""

from __future__ import annotations

import mmap
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]

CHILD = textwrap.dedent(
    """
    import pyarrow as pa
    from common.memory import stage_memory

    before = pa.default_memory_pool().backend_name
    try:
        with stage_memory():
            inside = pa.default_memory_pool().backend_name
            table = pa.table({"x": list(range(100_000))})
            raise ValueError("stage failed")
    except ValueError:
        pass
    print(before, inside, pa.default_memory_pool().backend_name, table.num_rows)
    """
)


def _child(pool: str | None) -> list[str]:
    env = {k: v for k, v in os.environ.items() if k != "ARROW_DEFAULT_MEMORY_POOL"}
    env["PYTHONPATH"] = str(ROOT)
    if pool is not None:
        env["ARROW_DEFAULT_MEMORY_POOL"] = pool
    proc = subprocess.run([sys.executable, "-c", CHILD], env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout.split()


def test_a_stage_switches_pyarrow_to_the_system_pool():
    pytest.importorskip("pyarrow")
    before, inside, after, rows = _child(None)
    assert before != "system"  # pyarrow's own default (mimalloc or jemalloc): the switch is not a no-op
    assert inside == after == "system"
    assert rows == "100000"


def test_a_pool_chosen_in_the_environment_is_kept():
    pa = pytest.importorskip("pyarrow")
    chosen = next((name for name in ("jemalloc", "mimalloc") if _available(pa, name)), None)
    if chosen is None:
        pytest.skip("this pyarrow has only the system pool")
    before, inside, after, _ = _child(chosen)
    assert before == inside == after == chosen


def _available(pa, name: str) -> bool:
    try:
        getattr(pa, f"{name}_memory_pool")()
    except (NotImplementedError, AttributeError):
        return False
    return True


ENTRY_MODULES = ["cli", "pipeline.ingest", "masking.stage", "mip.stage", "mip.audit", "shards.training_shards"]


@pytest.mark.parametrize("module", ENTRY_MODULES)
def test_importing_a_stage_selects_the_system_pool_for_arrows_cpp_side(module):
    """Arrow's C++ default pool is fixed when pyarrow loads, so `common` (imported by every package first)
    must set ARROW_DEFAULT_MEMORY_POOL before any module of the project imports pyarrow."""
    pytest.importorskip("pyarrow")
    env = {k: v for k, v in os.environ.items() if k != "ARROW_DEFAULT_MEMORY_POOL"}
    env["PYTHONPATH"] = str(ROOT)
    code = f"import {module}, pyarrow as pa; print(pa.default_memory_pool().backend_name)"
    proc = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split()[-1] == "system"


def test_releasing_map_yields_in_order_and_releases_after_each_call(monkeypatch):
    import common.memory as memory

    events: list[str] = []
    monkeypatch.setattr(memory, "release_memory", lambda: events.append("release"))

    def work(item: int) -> int:
        events.append(f"call {item}")
        return item * item

    results = memory.releasing_map(work, [3, 1, 2])
    assert events == []  # lazy, as map is: a driver loop pulls one task at a time
    assert list(results) == [9, 1, 4]
    assert events == ["call 3", "release", "call 1", "release", "call 2", "release"]


def test_releasing_map_hands_freed_heap_back_between_tasks():
    """In a fresh process: each task allocates and frees 50k small Python objects (glibc heap, not mmap'd);
    with plain `map` the freed chunks stay with the process, with `releasing_map` malloc_trim returns them.
    The check is relative (the same tasks both ways), so it does not depend on the machine."""
    code = textwrap.dedent(
        """
        import sys
        from common.memory import releasing_map, _libc

        if _libc() is None:
            print("skip"); sys.exit(0)

        def anon():
            with open("/proc/self/statm") as h:
                fields = h.read().split()
            return (int(fields[1]) - int(fields[2])) * 4096

        def task(i):
            blocks = [bytearray(600) for _ in range(50_000)]  # ~32 MB in malloc'd chunks below the mmap threshold
            keep = bytearray(600)  # one live block allocated last: the heap top cannot shrink by sbrk alone
            del blocks
            return keep

        mapper = releasing_map if sys.argv[1] == "releasing" else map
        base = anon()
        kept = list(mapper(task, range(3)))
        print(anon() - base)
        """
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    grown = {}
    for mode in ("plain", "releasing"):
        proc = subprocess.run([sys.executable, "-c", code, mode], env=env, cwd=ROOT, capture_output=True,
                              text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr[-2000:]
        if proc.stdout.strip() == "skip":
            pytest.skip("no glibc malloc_trim here")
        grown[mode] = int(proc.stdout.split()[-1])
    assert grown["plain"] > 20_000_000, grown  # the tasks did leave freed heap behind
    assert grown["releasing"] < grown["plain"] / 2, grown



@pytest.mark.parametrize("shape, dtype", [(10, "int32"), (300_000, "int64"), ((1 << 19, 3), "uint8"), (0, "int64")])
def test_table_array_is_a_zeroed_writable_array_of_the_shape(shape, dtype):
    from common.memory import TABLE_MMAP_MIN, table_array

    array = table_array(shape, dtype)
    expected = np.zeros(shape, dtype)
    assert array.shape == expected.shape and array.dtype == expected.dtype
    assert not array.any()
    array[...] = 7
    assert (array == 7).all()
    owner = array
    while isinstance(owner, np.ndarray) and owner.base is not None:
        owner = owner.base
    if isinstance(owner, memoryview):
        owner = owner.obj
    assert isinstance(owner, mmap.mmap) == (expected.nbytes >= TABLE_MMAP_MIN)
