"""pipeline.ray_runtime: Ray workers get the malloc arena limit and the system Arrow pool, and embedded Ray
spills where we say.

The Ray checks run in one fresh Python process (one `ensure_ray`, ~5 s), since the test session may already
have a Ray runtime up without these settings (conftest's `ray_session`), which `ensure_ray` would return.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pipeline import ray_runtime

ROOT = Path(__file__).resolve().parents[1]
STORE_MB = 128
OBJECTS, OBJECT_MB = 12, 16  # 192 MB put into a 128 MB store: some must spill
THREADS = 8

CHILD = textwrap.dedent(
    """
    import ctypes, json, os, sys, tempfile, threading
    from pathlib import Path
    import numpy as np
    from pipeline.ray_runtime import ensure_ray

    spill_dir, store_mb, objects, object_mb, threads = sys.argv[1], *map(int, sys.argv[2:6])

    def arenas_after_threads(n):
        # Each new thread's first malloc gets a fresh glibc arena until MALLOC_ARENA_MAX is reached;
        # malloc_info() lists one <heap nr=...> per arena.
        barrier = threading.Barrier(n)
        keep = []
        def work():
            barrier.wait()
            keep.append([bytearray(2048) for _ in range(200)])
        pool = [threading.Thread(target=work) for _ in range(n)]
        for t in pool:
            t.start()
        for t in pool:
            t.join()
        libc = ctypes.CDLL("libc.so.6")
        libc.fopen.restype = ctypes.c_void_p
        libc.fopen.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
        libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
        libc.fclose.argtypes = [ctypes.c_void_p]
        with tempfile.NamedTemporaryFile(suffix=".xml") as out:
            fp = libc.fopen(out.name.encode(), b"w")
            libc.malloc_info(0, fp)
            libc.fclose(fp)
            return open(out.name).read().count("<heap nr=")

    ray = ensure_ray(1, object_store_mb=store_mb, spill_dir=spill_dir)

    @ray.remote
    def task_env():
        return os.environ.get("MALLOC_ARENA_MAX")

    @ray.remote
    def task_arrow_pool():
        import pyarrow as pa
        return pa.default_memory_pool().backend_name

    @ray.remote
    class Actor:
        def env(self):
            return os.environ.get("MALLOC_ARENA_MAX")

        def arenas(self, n):
            return arenas_after_threads(n)

    actor = Actor.remote()
    result = {
        "driver_env_after": os.environ.get("MALLOC_ARENA_MAX"),
        "task_env": ray.get(task_env.remote()),
        "task_arrow_pool": ray.get(task_arrow_pool.remote()),
        "driver_arrow_pool_env_after": os.environ.get("ARROW_DEFAULT_MEMORY_POOL"),
        "actor_env": ray.get(actor.env.remote()),
        "actor_arenas": ray.get(actor.arenas.remote(threads)),
        "driver_arenas": arenas_after_threads(threads),
    }
    size = object_mb << 20
    refs = [ray.put(np.full(size, k, dtype=np.uint8)) for k in range(objects)]
    spilled = [p for p in Path(spill_dir).rglob("*") if p.is_file()]
    result["spill_folders"] = sorted(p.name for p in Path(spill_dir).iterdir())
    result["spilled_bytes"] = sum(p.stat().st_size for p in spilled)
    result["read_back"] = [bool(np.array_equal(ray.get(r), np.full(size, k, dtype=np.uint8)))
                           for k, r in enumerate(refs)]
    ray.shutdown()
    print("RESULT " + json.dumps(result))
    """
)


@pytest.fixture(scope="module")
def embedded(tmp_path_factory):
    """Run CHILD once: ensure_ray in a fresh process, with no MALLOC_ARENA_MAX in its environment."""
    pytest.importorskip("ray")
    if not sys.platform.startswith("linux"):
        pytest.skip("glibc malloc arenas and malloc_info are Linux-only")
    spill = tmp_path_factory.mktemp("spill")
    env = {k: v for k, v in os.environ.items() if k not in ("MALLOC_ARENA_MAX", "ARROW_DEFAULT_MEMORY_POOL", ray_runtime.SPILL_DIR_ENV)}
    env.update(PYTHONPATH=str(ROOT), RAY_USAGE_STATS_ENABLED="0")
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(spill), str(STORE_MB), str(OBJECTS), str(OBJECT_MB), str(THREADS)],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=180,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, f"child failed ({proc.returncode}):\n{proc.stderr[-3000:]}"
    return spill, json.loads(lines[-1][len("RESULT "):]), proc.stderr


@pytest.mark.ray
def test_workers_get_the_arena_limit_and_the_driver_env_is_restored(embedded):
    _, result, _ = embedded
    assert result["task_env"] == "2"
    assert result["actor_env"] == "2"
    assert result["driver_env_after"] is None  # set only while ray.init starts the daemons


@pytest.mark.ray
def test_workers_allocate_arrow_buffers_from_the_system_pool(embedded):
    _, result, _ = embedded
    assert result["task_arrow_pool"] == "system"  # pyarrow's own default here is mimalloc or jemalloc
    assert result["driver_arrow_pool_env_after"] == "system"  # importing `common` set it for the process


@pytest.mark.ray
def test_the_arena_limit_takes_effect_in_the_worker_allocator(embedded):
    _, result, _ = embedded
    # Control: the driver, started without the limit, gets an arena per thread (this proves the count works).
    assert result["driver_arenas"] > THREADS // 2, result
    assert result["actor_arenas"] <= 2, result


@pytest.mark.ray
def test_objects_beyond_the_store_spill_to_the_configured_directory_and_read_back(embedded):
    spill, result, stderr = embedded
    assert all(result["read_back"]) and len(result["read_back"]) == OBJECTS
    assert any(name.startswith("ray_spilled_objects_") for name in result["spill_folders"]), result
    # At least what did not fit in the store was written there.
    assert result["spilled_bytes"] >= (OBJECTS * OBJECT_MB - STORE_MB) << 20, result
    import ray

    if "object_spilling_directory" in ray_runtime._spill_options(ray, spill):
        assert "unstable API" not in stderr  # Ray's warning for the older system-config route


def test_worker_env_keeps_a_value_already_set(monkeypatch):
    monkeypatch.delenv("MALLOC_ARENA_MAX", raising=False)
    monkeypatch.delenv("ARROW_DEFAULT_MEMORY_POOL", raising=False)
    assert ray_runtime.worker_env() == {"MALLOC_ARENA_MAX": "2", "ARROW_DEFAULT_MEMORY_POOL": "system"}
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    assert ray_runtime.worker_env() == {"MALLOC_ARENA_MAX": "4", "ARROW_DEFAULT_MEMORY_POOL": "system"}


def test_spill_directory_default_and_override(monkeypatch, tmp_path):
    monkeypatch.delenv(ray_runtime.SPILL_DIR_ENV, raising=False)
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path / "raytmp"))
    assert ray_runtime.spill_directory() == tmp_path / "raytmp" / "ray" / "spill"
    monkeypatch.delenv("RAY_TMPDIR")
    monkeypatch.delenv("TMPDIR", raising=False)
    assert ray_runtime.spill_directory() == Path("/tmp/ray/spill")
    monkeypatch.setenv(ray_runtime.SPILL_DIR_ENV, str(tmp_path / "mine"))
    assert ray_runtime.spill_directory() == tmp_path / "mine"


def test_environ_is_restored_after_the_block(monkeypatch):
    monkeypatch.delenv("GLM_CORPUS_TEST_A", raising=False)
    monkeypatch.setenv("GLM_CORPUS_TEST_B", "old")
    with ray_runtime._environ({"GLM_CORPUS_TEST_A": "1", "GLM_CORPUS_TEST_B": "new"}):
        assert os.environ["GLM_CORPUS_TEST_A"] == "1" and os.environ["GLM_CORPUS_TEST_B"] == "new"
    assert "GLM_CORPUS_TEST_A" not in os.environ
    assert os.environ["GLM_CORPUS_TEST_B"] == "old"


def test_release_memory_runs():
    pytest.importorskip("pyarrow")
    from common.memory import release_memory

    release_memory()
    release_memory()
