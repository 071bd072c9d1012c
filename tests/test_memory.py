"""common.memory: stages allocate Arrow buffers from the system pool (unless the user chose one), and hand
freed heap back after their work, also when it fails.

Each check runs in a fresh interpreter: pyarrow fixes its default pool on first use, and this test session
has long since used it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

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
