"""The whole demo (raw data, tokenizer, ingest, MIP, masking, audit, training, report) gives the same
bytes with 1 worker, 2 workers and on a two-node Ray cluster (issue 10, DESIGN §4 and §9).

Every file is compared. Files that record how the run went rather than what it made (timings, the
worker count) are compared with those fields removed; report.html embeds them, so it is compared
only for existing. Each run uses the same output path: documents' ids name their input file.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import shutil
from pathlib import Path
from typing import Any

import orjson
import pytest

from pipeline.demo import run_demo
from tests.local_cluster import LocalCluster, ray_command

pytestmark = [pytest.mark.faults, pytest.mark.ray, pytest.mark.slow]

SCALE = 0.03
TRAIN_STEPS = 2
RUN_RECORDS = {"tokens/manifest.json", "train/stats.json"}
RUN_FIELDS = {"seconds", "tokens_per_second", "workers", "ray_address"}
RENDERED = {"report.html"}


def _without_run_fields(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_run_fields(v) for k, v in value.items() if k not in RUN_FIELDS}
    if isinstance(value, list):
        return [_without_run_fields(v) for v in value]
    return value


def fingerprint(root: Path) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        name = path.relative_to(root).as_posix()
        if name in RUN_RECORDS:
            result[name] = _without_run_fields(orjson.loads(path.read_bytes()))
        elif name in RENDERED:
            result[name] = "present"
        else:
            result[name] = hashlib.sha256(path.read_bytes()).hexdigest()
    return result


@pytest.fixture(scope="module")
def runs(tmp_path_factory, ray_session) -> dict[str, dict[str, Any]]:
    base = tmp_path_factory.mktemp("determinism")
    out = base / "run"
    results = {}
    for workers in (1, 2):
        with contextlib.redirect_stdout(io.StringIO()):
            run_demo(out, workers=workers, scale=SCALE, train_steps=TRAIN_STEPS)
        results[f"{workers} worker(s)"] = fingerprint(out)
        shutil.rmtree(out)
    if not Path(ray_command()).exists():
        pytest.skip("the `ray` command is not installed beside this Python")
    with LocalCluster(Path(f"/tmp/ray_det_{os.getpid()}")) as cluster:  # AF_UNIX paths: <= 107 bytes
        result = cluster.cli("demo", "--out", str(out), "--workers", "2", "--scale", str(SCALE),
                             "--train-steps", str(TRAIN_STEPS), timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]
        assert f"joining Ray cluster at {cluster.address}" in result.stderr
    results["two-node cluster"] = fingerprint(out)
    return results


def test_the_demo_makes_every_stage(runs):
    files = runs["1 worker(s)"]
    for expected in ("tokens/manifest.json", "mip/mip-plan.json", "train/training_shards.json", "audit.json",
                     "report.html", "tokenizer/ice_text.model"):
        assert expected in files
    assert any(name.startswith("checkpoints/") for name in files)
    assert sum(name.endswith(".bin") for name in files) >= 3


@pytest.mark.parametrize("other", ["2 worker(s)", "two-node cluster"])
def test_same_bytes_as_one_worker(runs, other):
    one, two = runs["1 worker(s)"], runs[other]
    assert sorted(one) == sorted(two)
    differing = [name for name in one if one[name] != two[name]]
    assert not differing, f"{other} differs from 1 worker in {differing}"
