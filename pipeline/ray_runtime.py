"""Starting Ray the same way everywhere: embedded by default, an existing cluster with `--ray-address`."""

from __future__ import annotations

import logging
import os
from typing import Any

log = logging.getLogger(__name__)


def ensure_ray(workers: int, address: str | None = None, object_store_mb: int = 256) -> Any:
    """Connect to Ray once per process and return the `ray` module.

    Embedded mode sizes the runtime explicitly (CPUs = workers, a small object store) so it behaves on
    small machines with little /dev/shm; cluster mode joins `address` and uses what the cluster has.
    """
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    import ray

    if ray.is_initialized():
        return ray
    if address:
        log.info("joining Ray cluster at %s", address)
        ray.init(address=address, log_to_driver=False, configure_logging=False)
    else:
        ray.init(
            num_cpus=max(1, workers),
            object_store_memory=object_store_mb * 1024 * 1024,
            include_dashboard=False,
            log_to_driver=False,
            configure_logging=False,
        )
    return ray
