"""Inputs and outputs through URIs: S3 against a real local moto server, and `file://` against plain paths.

What is checked: an ingest from `s3://BUCKET/raw` to `s3://BUCKET/out` gives token shards byte-identical
to a local run of the same files, provenance equal once the URI replaces the local path, the same
manifest counts, manifest.json uploaded last; a rerun resumes from done.json; a `file://` run equals a
plain-path run; unknown schemes and missing buckets fail with clear errors before any work starts.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import tempfile
import uuid
from pathlib import Path

import orjson
import pyarrow.parquet as pq
import pytest
import xxhash

pytest.importorskip("moto.server", reason="moto[server] is not installed (pip install 'moto[server]', in the dev extra)")
boto3 = pytest.importorskip("boto3", reason="boto3 (installed with moto) is missing")

from common import storage  # noqa: E402
from common.errors import ConfigError  # noqa: E402
from pipeline import ingest  # noqa: E402
from pipeline.ingest import IngestConfig, run_ingest  # noqa: E402
from shards.verify import verify_directory  # noqa: E402


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


ENDPOINT = f"http://127.0.0.1:{_free_port()}"
BUCKET = f"corpus-{uuid.uuid4().hex[:8]}"  # unique: the default stage directory is named by the out URI
# Ray workers see the environment the session's Ray was started with, and that Ray may be started by any
# module's tests; modules are imported before any test runs, so setting the S3 settings here reaches them.
os.environ.update(AWS_ENDPOINT_URL=ENDPOINT, AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
                  AWS_REGION="us-east-1")


@pytest.fixture(scope="module")
def s3(small_raw_corpus):
    """A moto S3 server on 127.0.0.1 with BUCKET holding the raw corpus under raw/; yields a boto3 client."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=int(ENDPOINT.rsplit(":", 1)[1]), verbose=False)
    server.start()
    try:
        client = boto3.client("s3", endpoint_url=ENDPOINT, region_name="us-east-1")
        client.create_bucket(Bucket=BUCKET)
        raw, _ = small_raw_corpus
        for path in sorted(p for p in raw.rglob("*") if p.is_file()):
            client.upload_file(str(path), BUCKET, f"raw/{path.relative_to(raw).as_posix()}")
        yield client
    finally:
        server.stop()


def download_prefix(client, prefix: str, dest: Path) -> dict[str, Path]:
    """Every object under `prefix` copied to `dest`, by key relative to the prefix."""
    files = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=f"{prefix}/"):
        for item in page.get("Contents", []):
            relative = item["Key"][len(prefix) + 1 :]
            files[relative] = dest / relative
            files[relative].parent.mkdir(parents=True, exist_ok=True)
            client.download_file(BUCKET, item["Key"], str(files[relative]))
    return files


def untimed(stages: dict) -> dict:
    """A manifest's stage chain without the (run-dependent) seconds."""
    return {name: {k: v for k, v in stage.items() if k != "seconds"} for name, stage in stages.items()}


def same_bytes(mine: Path, reference: Path) -> bool:
    """Equal files; a shard's checksum.json is compared without its `prefix` (the absolute path it was
    written at, which differs between two output directories)."""
    if mine.name.endswith(".checksum.json"):
        strip = lambda path: {k: v for k, v in orjson.loads(path.read_bytes()).items() if k != "prefix"}  # noqa: E731
        return strip(mine) == strip(reference)
    return mine.read_bytes() == reference.read_bytes()


def outputs(out: Path) -> dict[str, Path]:
    return {p.relative_to(out).as_posix(): p for p in sorted(out.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def local_run(ray_session, small_raw_corpus, tiny_model, tmp_path_factory):
    raw, _ = small_raw_corpus
    out = tmp_path_factory.mktemp("local-out")
    manifest = run_ingest(IngestConfig(inputs=[str(raw)], out=str(out), tokenizer=str(tiny_model)), progress=False)
    return out, manifest


def remote_config(tiny_model, keep_work: bool = True) -> IngestConfig:
    return IngestConfig(inputs=[f"s3://{BUCKET}/raw"], out=f"s3://{BUCKET}/out", tokenizer=str(tiny_model),
                        keep_work=keep_work)


def default_stage() -> Path:
    return Path(tempfile.gettempdir()) / ingest.STAGE_ROOT / xxhash.xxh64_hexdigest(f"s3://{BUCKET}/out".encode())


@pytest.fixture(scope="module")
def remote_run(s3, ray_session, tiny_model, tmp_path_factory):
    """S3 in, S3 out (default stage, kept by keep_work for the resume test); uploads recorded in order."""
    seen = ray_session.get(ray_session.remote(lambda: os.environ.get("AWS_ENDPOINT_URL")).remote())
    if seen != ENDPOINT:
        pytest.skip(f"the session's Ray was started before this module set AWS_ENDPOINT_URL (workers see {seen})")
    uploads: list[str] = []
    with pytest.MonkeyPatch.context() as patch:
        upload, write_bytes = storage.upload, storage.write_bytes
        patch.setattr(storage, "upload", lambda src, uri: (uploads.append(uri), upload(src, uri))[1])
        patch.setattr(storage, "write_bytes", lambda uri, data: (uploads.append(uri), write_bytes(uri, data))[1])
        manifest = run_ingest(remote_config(tiny_model), progress=False)
    downloaded = tmp_path_factory.mktemp("remote-out")
    files = download_prefix(s3, "out", downloaded)
    assert verify_directory(downloaded, progress=False)["ok"]  # checksums and manifest accounting
    yield manifest, files, uploads
    shutil.rmtree(default_stage(), ignore_errors=True)


def test_remote_files_are_listed_sorted_with_sizes(s3, small_raw_corpus):
    raw, _ = small_raw_corpus
    listed = storage.list_files(f"s3://{BUCKET}/raw")
    expected = sorted((f"s3://{BUCKET}/raw/{p.relative_to(raw).as_posix()}", p.stat().st_size)
                      for p in raw.rglob("*") if p.is_file())
    assert listed == expected
    first = listed[0][0]
    assert storage.list_files(first) == [listed[0]]  # one file: itself
    assert storage.read_prefix(first, 10) == (raw / first.split("/raw/", 1)[1]).read_bytes()[:10]


def test_remote_inputs_are_detected_like_local_files(s3, small_raw_corpus):
    raw, _ = small_raw_corpus
    remote = ingest.discover_inputs(IngestConfig(inputs=[f"s3://{BUCKET}/raw"]))
    local = ingest.discover_inputs(IngestConfig(inputs=[str(raw)]))
    assert [(f.format, f.source, f.size) for f in remote] == [(f.format, f.source, f.size) for f in local]
    assert [f.path for f in remote] == [p.path.replace(str(raw), f"s3://{BUCKET}/raw") for p in local]


def test_s3_run_equals_local_run_except_paths(remote_run, local_run, small_raw_corpus):
    manifest, files, _ = remote_run
    local_out, local_manifest = local_run
    raw, _ = small_raw_corpus
    local_files = outputs(local_out)
    assert sorted(files) == sorted(local_files)
    shard_files = [name for name in files if name.endswith((".bin", ".idx", ".checksum.json"))]
    assert shard_files
    for name in shard_files:
        assert same_bytes(files[name], local_files[name]), name
    uri = f"s3://{BUCKET}/raw"
    for name in (n for n in files if n.endswith(".parquet")):
        remote_rows = pq.read_table(files[name]).to_pylist()
        local_rows = pq.read_table(local_files[name]).to_pylist()
        local_rows = orjson.loads(orjson.dumps(local_rows).replace(str(raw).encode(), uri.encode()))
        assert remote_rows == local_rows, name
    uploaded = orjson.loads(files["manifest.json"].read_bytes())
    assert uploaded["out"] == f"s3://{BUCKET}/out" and uploaded["config"]["out"] == f"s3://{BUCKET}/out"
    for source, entry in local_manifest["sources"].items():
        for key in ("docs_in", "docs_out", "dropped", "bytes_in", "tokens_out", "langs", "shards"):
            assert uploaded["sources"][source][key] == entry[key], (source, key)
        assert untimed(uploaded["sources"][source]["stages"]) == untimed(entry["stages"]), source
        assert uploaded["sources"][source]["files"] == [f.replace(str(raw), uri) for f in entry["files"]]
    assert uploaded["totals"] == local_manifest["totals"]
    listing = f"s3://{BUCKET}/out/dedup/dropped.parquet"
    assert uploaded["dedup"] == {**local_manifest["dedup"], "listing": listing}  # no stage paths left
    assert "dedup/dropped.parquet" in files
    assert manifest["totals"] == uploaded["totals"]
    assert not any(name.startswith("work/") for name in files)  # the stage's work shards stay local


def test_manifest_is_uploaded_last(remote_run, s3):
    _, files, uploads = remote_run
    assert uploads[-1] == f"s3://{BUCKET}/out/manifest.json"
    assert sorted(u.split("/out/", 1)[1] for u in uploads) == sorted(files)
    modified = {item["Key"]: item["LastModified"] for item in s3.list_objects_v2(Bucket=BUCKET, Prefix="out/")["Contents"]}
    assert modified["out/manifest.json"] == max(modified.values())  # the server's view (1 s resolution)


def test_remote_run_resumes_from_done_json_and_then_removes_its_stage(remote_run, s3, tiny_model, monkeypatch):
    manifest, files, _ = remote_run
    stage = default_stage()
    assert len(list((stage / ingest.WORK_DIR).glob(f"*/{ingest.DONE_FILE}"))) == len(manifest["inputs"])
    assert not list((stage / ingest.WORK_DIR / ingest.SPOOL_DIR).glob("*"))  # spool copies removed when read

    def no_file_work(*args, **kwargs):
        raise AssertionError("every file has a done.json: nothing should be processed again")

    monkeypatch.setattr(ingest, "_process_files", no_file_work)
    # Complete run, same config: the uploaded manifest says there is nothing to do.
    assert run_ingest(remote_config(tiny_model), progress=False)["totals"] == manifest["totals"]
    # An upload interrupted before the manifest: rerun from the stage's done.json files.
    s3.delete_object(Bucket=BUCKET, Key="out/manifest.json")
    (stage / ingest.MANIFEST).unlink()
    resumed = run_ingest(remote_config(tiny_model, keep_work=False), progress=False)
    assert resumed["totals"] == manifest["totals"]
    assert not stage.exists()  # the default stage is removed after a successful upload
    again = s3.get_object(Bucket=BUCKET, Key="out/manifest.json")["Body"].read()
    assert orjson.loads(again)["sources"] == orjson.loads(files["manifest.json"].read_bytes())["sources"]
    for name in (n for n in files if n.endswith((".bin", ".idx"))):
        assert s3.get_object(Bucket=BUCKET, Key=f"out/{name}")["Body"].read() == files[name].read_bytes()


def test_file_uri_run_equals_plain_path_run(local_run, small_raw_corpus, tiny_model, tmp_path):
    local_out, local_manifest = local_run
    raw, _ = small_raw_corpus
    out = tmp_path / "file-uri-out"
    manifest = run_ingest(IngestConfig(inputs=[raw.as_uri()], out=out.as_uri(), tokenizer=str(tiny_model)),
                          progress=False)
    assert manifest["out"] == str(out)
    mine, reference = outputs(out), outputs(local_out)
    assert sorted(mine) == sorted(reference)
    for name in (n for n in mine if n != "manifest.json"):
        assert same_bytes(mine[name], reference[name]), name
    written = orjson.loads(mine["manifest.json"].read_bytes())
    for key in ("totals", "inputs", "drop_examples"):
        assert written[key] == local_manifest[key], key
    assert {**written["dedup"], "listing": ""} == {**local_manifest["dedup"], "listing": ""}
    for source, entry in local_manifest["sources"].items():
        mine_entry = written["sources"][source]
        assert {**mine_entry, "stages": untimed(mine_entry["stages"])} == {**entry, "stages": untimed(entry["stages"])}


@pytest.mark.parametrize("where", ["inputs", "out"])
def test_unknown_scheme_is_a_config_error(where, tiny_model, tmp_path):
    config = IngestConfig(inputs=[str(tmp_path)], out=str(tmp_path / "out"), tokenizer=str(tiny_model))
    setattr(config, where, ["ftp://host/raw"] if where == "inputs" else "ftp://host/out")
    with pytest.raises(ConfigError, match=r"unsupported URI scheme 'ftp' in ftp://host/.*s3://"):
        run_ingest(config, progress=False)


@pytest.mark.parametrize("where", ["inputs", "out"])
def test_missing_bucket_is_a_config_error(where, s3, small_raw_corpus, tiny_model, tmp_path):
    raw, _ = small_raw_corpus
    config = IngestConfig(inputs=[str(raw)], out=str(tmp_path / "out"), tokenizer=str(tiny_model))
    setattr(config, where, ["s3://no-such-bucket/raw"] if where == "inputs" else "s3://no-such-bucket/out")
    with pytest.raises(ConfigError, match="bucket 'no-such-bucket' does not exist"):
        run_ingest(config, progress=False)
    assert not (tmp_path / "out").exists()  # failed before any work


def test_missing_prefix_is_a_config_error(s3, tiny_model, tmp_path):
    config = IngestConfig(inputs=[f"s3://{BUCKET}/nothing-here"], out=str(tmp_path), tokenizer=str(tiny_model))
    with pytest.raises(ConfigError, match=f"input s3://{BUCKET}/nothing-here does not exist"):
        run_ingest(config, progress=False)
