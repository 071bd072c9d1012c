"""Starting Ray the same way everywhere: embedded by default, an existing cluster with `--ray-address`.

Three settings apply to every Ray worker process this module starts:

- **glibc malloc arenas** (`MALLOC_ARENA_MAX=2`, `WORKER_ENV`). A Ray worker runs its tasks beside a dozen
  C++ threads (gRPC, the core worker's io loops) and glibc gives each thread that allocates its own arena,
  so freed memory is scattered over arenas and a long-lived actor's heap only grows: measured with one
  `FileWorker` actor over 66 ingest files of 2 MB, peak anonymous memory per pass of 22 files 280 / 296 /
  309 MB by default and 201 / 202 / 202 MB with two arenas (the same calls in a plain process: 168 MB).
  A value already in the environment wins. Embedded mode puts it in the environment of the Ray daemons it
  starts (workers inherit it); cluster mode passes it as the job's `runtime_env` env_vars, since the
  cluster's daemons were started by `ray start` (a runtime_env costs its first worker a few seconds).
- **pyarrow's system pool** (`ARROW_DEFAULT_MEMORY_POOL=system`, in `WORKER_ENV` the same way): mimalloc's
  per-thread heaps keep growing with the number of parquet files a process reads (common/memory.py).
- **Object spilling** (embedded mode) goes to `spill_directory()`: `GLM_CORPUS_SPILL_DIR`, else
  `<Ray's temp dir>/spill` (`$RAY_TMPDIR/ray/spill`, `$TMPDIR/ray/spill` or `/tmp/ray/spill`). Ray writes
  into a `ray_spilled_objects_<node id>` folder there and removes it when the runtime shuts down cleanly.
  A cluster spills where its `ray start` said.

`common.memory.release_memory()` hands freed heap back to the OS (malloc_trim and pyarrow's pool);
between tasks of a long-lived actor it lowers the memory an idle actor holds, not the peak during a task.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from common.memory import ARROW_POOL, ARROW_POOL_ENV

log = logging.getLogger(__name__)

WORKER_ENV = {"MALLOC_ARENA_MAX": "2", ARROW_POOL_ENV: ARROW_POOL}
"""Environment of every Ray worker process (see the module docstring); os.environ's own value wins."""
SPILL_DIR_ENV = "GLM_CORPUS_SPILL_DIR"


def worker_env() -> dict[str, str]:
    """The environment variables Ray workers get: WORKER_ENV, with any value already set here kept."""
    return {name: os.environ.get(name, value) for name, value in WORKER_ENV.items()}


def spill_directory() -> Path:
    """Where embedded Ray spills objects: $GLM_CORPUS_SPILL_DIR, else `spill` in Ray's default temp dir."""
    explicit = os.environ.get(SPILL_DIR_ENV)
    if explicit:
        return Path(explicit).expanduser()
    if os.environ.get("RAY_TMPDIR"):  # Ray's own rule for its temp dir (ray._common.utils)
        system_tmp = os.environ["RAY_TMPDIR"]
    elif sys.platform.startswith("linux") and os.environ.get("TMPDIR"):
        system_tmp = os.environ["TMPDIR"]
    else:
        system_tmp = "/tmp"
    return Path(system_tmp) / "ray" / "spill"


@contextlib.contextmanager
def _environ(values: dict[str, str]) -> Iterator[None]:
    """Set `values` in os.environ for the block (the daemons ray.init starts inherit them), then restore."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _spill_options(ray: Any, directory: Path) -> dict[str, Any]:
    """ray.init options that spill to `directory`: the `object_spilling_directory` option where this Ray
    has it (2.44+; no warning), else the older `object_spilling_config` system config."""
    try:
        from ray._private.parameter import RayParams

        if "object_spilling_directory" in inspect.signature(RayParams).parameters:
            return {"object_spilling_directory": str(directory)}
    except (ImportError, TypeError, ValueError):
        pass
    config = {"type": "filesystem", "params": {"directory_path": str(directory)}}
    return {"_system_config": {"object_spilling_config": json.dumps(config)}}


def ensure_ray(workers: int, address: str | None = None, object_store_mb: int = 256,
               spill_dir: str | Path | None = None) -> Any:
    """Connect to Ray once per process and return the `ray` module.

    Embedded mode sizes the runtime explicitly (CPUs = workers, a small object store) so it behaves on
    small machines with little /dev/shm, and spills to `spill_dir` (default `spill_directory()`); cluster
    mode joins `address` and uses what the cluster has. Both give workers `worker_env()`. A runtime that
    is already up (started elsewhere in this process) is returned as it is.
    """
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    import ray

    if ray.is_initialized():
        return ray
    env = worker_env()
    if address:
        log.info("joining Ray cluster at %s", address)
        ray.init(address=address, log_to_driver=False, configure_logging=False,
                 runtime_env={"env_vars": env})
    else:
        spill = Path(spill_dir).expanduser() if spill_dir is not None else spill_directory()
        spill.mkdir(parents=True, exist_ok=True)
        with _environ(env):
            ray.init(
                num_cpus=max(1, workers),
                object_store_memory=object_store_mb * 1024 * 1024,
                include_dashboard=False,
                log_to_driver=False,
                configure_logging=False,
                **_spill_options(ray, spill),
            )
    return ray
