"""Shared fixtures. Ray is started at most once per test session, with a small object store."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import common  # noqa: E402, F401 - before any test imports pyarrow: the system Arrow pool, as in production


@pytest.fixture(scope="session")
def ray_session():
    """A local Ray runtime shared by every test that needs one (2 CPUs, 128 MB object store), started by
    `ensure_ray` as the stages start it (worker environment, spill directory)."""
    pytest.importorskip("ray")
    from pipeline.ray_runtime import ensure_ray

    yield ensure_ray(2, object_store_mb=128)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """A tiny icetk-layout tokenizer model trained once per session (about a second)."""
    from tests.tokenizer_fixtures import train_tiny_model

    return train_tiny_model(tmp_path_factory.mktemp("tokenizer"))


@pytest.fixture(scope="session")
def small_raw_corpus(tmp_path_factory):
    """The default corpus at 3% scale, in its three raw formats (with planted duplicates and bad records)."""
    from pipeline.default_data import build_default_data

    out = tmp_path_factory.mktemp("raw")
    return out, build_default_data(out, scale=0.03)
