"""Fault injection (issue 10): what the ingest does when a worker dies, the disk is full or unwritable,
and when it runs on a real multi-node Ray cluster. docs/RELIABILITY.md lists each fault and the outcome.

1. A FileWorker process is SIGKILLed while it processes a file: Ray restarts the actor and retries the
   task, and the shards are byte-identical to an uninterrupted run.
2. An output path that cannot be created, and a disk that fills up while a shard is written: the CLI
   exits 1 with one line naming the path (no traceback) and no half-written shard is visible.
3. A two-node Ray cluster on this machine (`ray start --head` + `ray start --address`), the ingest run
   in a subprocess with `--ray-address`: byte-identical shards to the embedded single-node run.
"""

from __future__ import annotations

import errno
import hashlib
import os
import signal
import threading
import time
from pathlib import Path

import orjson
import pytest

from pipeline.ingest import IngestConfig, run_ingest
from shards.token_shards import TokenShardWriter
from shards.verify import verify_directory
from tests.local_cluster import LocalCluster, _kill_session, _session_members, ray_command

NEEDS_RAY_COMMAND = pytest.mark.skipif(not Path(ray_command()).exists(),
                                       reason="the `ray` command is not installed beside this Python")
pytestmark = [pytest.mark.faults, pytest.mark.ray]

ROOT = Path(__file__).resolve().parents[1]
SHARD_SUFFIXES = {".bin", ".idx", ".parquet"}


def shard_digest(out: Path) -> dict[str, str]:
    """sha256 of every shard file (manifest.json is left out: it holds timings)."""
    return {
        p.relative_to(out).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(out.rglob("*"))
        if p.is_file() and p.suffix in SHARD_SUFFIXES
    }


def half_written_shards(out: Path) -> list[str]:
    """Visible `.bin` files without their `.checksum.json` record (an incomplete shard)."""
    return sorted(
        str(p) for p in out.rglob("*.bin")
        if not p.name.startswith(".") and not p.with_name(p.name[: -len(".bin")] + ".checksum.json").exists()
    )


@pytest.fixture(scope="module")
def baseline(ray_session, small_raw_corpus, tiny_model, tmp_path_factory):
    """An uninterrupted embedded-Ray run with 2 workers: the bytes every faulty run must reproduce."""
    raw, _ = small_raw_corpus
    out = tmp_path_factory.mktemp("baseline")
    run_ingest(IngestConfig(inputs=[str(raw)], out=str(out), tokenizer=str(tiny_model), workers=2), progress=False)
    digest = shard_digest(out)
    assert digest and any(name.endswith(".bin") for name in digest)
    return out, digest


# ---------------------------------------------------------------------------------------------------------
# 1. A Ray worker SIGKILLed mid-file


def _descendants(root: int) -> list[int]:
    """Every live process below `root`, from /proc (the embedded raylet and its workers hang off us)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found, stack = [], [root]
    while stack:
        for child in children.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def test_worker_killed_mid_file_is_retried_to_identical_shards(baseline, small_raw_corpus, tiny_model, tmp_path):
    _, expected = baseline
    raw, _ = small_raw_corpus
    out = tmp_path / "out"
    killed: list[dict] = []
    stop = threading.Event()

    def killer() -> None:
        # A FileWorker's process title is `ray::FileWorker.process` only while it runs process(): a file
        # is being read/tokenized/written at that moment. Kill the first one seen, once.
        while not stop.is_set():
            for pid in _descendants(os.getpid()):
                if "ray::FileWorker.process" in _cmdline(pid):
                    sealed = len(list((out / "work").glob("*/done.json")))
                    os.kill(pid, signal.SIGKILL)
                    killed.append({"pid": pid, "sealed_before": sealed,
                                   "manifest_before": (out / "manifest.json").exists()})
                    return
            time.sleep(0.005)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    try:
        manifest = run_ingest(
            IngestConfig(inputs=[str(raw)], out=str(out), tokenizer=str(tiny_model), workers=2), progress=False
        )
    finally:
        stop.set()
        thread.join(timeout=5)
    assert killed, "no FileWorker was seen processing a file: the kill never happened (test is vacuous)"
    kill = killed[0]
    assert not kill["manifest_before"], "the kill landed after the run had finished"
    assert kill["sealed_before"] < len(manifest["inputs"]), "the kill landed after every file was sealed"
    assert not Path(f"/proc/{kill['pid']}").exists() or "FileWorker" not in _cmdline(kill["pid"])
    assert shard_digest(out) == expected
    assert verify_directory(out, progress=False)["ok"]
    assert not half_written_shards(out)


# ---------------------------------------------------------------------------------------------------------
# 1b. A Ray worker SIGKILLed mid-dedup


def test_worker_killed_mid_dedup_is_retried_to_identical_shards(
    baseline, small_raw_corpus, tiny_model, tmp_path, monkeypatch
):
    """The global dedup's Ray tasks (forced on with distributed_min_docs=0): the worker running the first
    dedup task SIGKILLs itself before doing any work, once. Ray retries the task; the shards equal the
    baseline, whose dedup ran in the driver, so this also proves the Ray path decides like the driver."""
    from pipeline.dedup import global_dedup
    from pipeline.dedup.config import DedupConfig

    _, expected = baseline
    raw, _ = small_raw_corpus
    marker = tmp_path / "killed-once"
    real_ray_map = global_dedup.ray_map

    def ray_map_that_kills_once(workers: int):
        mapper = real_ray_map(workers)

        def killing_mapper(function, items):
            def first_attempt_dies(item):  # runs inside a Ray worker process
                try:
                    fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
                except FileExistsError:
                    return function(item)
                os.write(fd, str(os.getpid()).encode())
                os.close(fd)
                os.kill(os.getpid(), signal.SIGKILL)

            return mapper(first_attempt_dies, items)

        return killing_mapper

    monkeypatch.setattr(global_dedup, "ray_map", ray_map_that_kills_once)
    out = tmp_path / "out"
    config = IngestConfig(inputs=[str(raw)], out=str(out), tokenizer=str(tiny_model), workers=2,
                          dedup=DedupConfig(distributed_min_docs=0))
    run_ingest(config, progress=False)
    assert marker.exists(), "no dedup task ran on Ray: the kill never happened (test is vacuous)"
    victim = int(marker.read_text())
    assert victim != os.getpid() and not Path(f"/proc/{victim}").exists()
    assert shard_digest(out) == expected
    assert verify_directory(out, progress=False)["ok"]


# ---------------------------------------------------------------------------------------------------------
# 2. Unwritable output, disk full


def _one_line_error(err: str, path: str) -> str:
    lines = [line for line in err.splitlines() if "error:" in line]
    assert "Traceback" not in err, err
    assert len(lines) == 1, err
    assert path in lines[0], lines[0]
    return lines[0]


def test_uncreatable_output_directory_is_a_clear_error(small_raw_corpus, tiny_model, tmp_path, capsys):
    from cli import main

    raw, _ = small_raw_corpus
    blocker = tmp_path / "file.txt"
    blocker.write_text("a regular file where a directory is needed\n")
    out = blocker / "sub"
    code = main(["ingest", "--input", str(raw), "--out", str(out), "--tokenizer", str(tiny_model),
                 "--workers", "1"])
    assert code == 1
    line = _one_line_error(capsys.readouterr().err, str(out))
    assert line.startswith("glm-corpus ingest: error:") and "Not a directory" in line
    assert blocker.read_text().startswith("a regular file")


@pytest.mark.parametrize("how", ["chmod", "erofs"])
def test_read_only_output_directory_is_a_clear_error(how, small_raw_corpus, tiny_model, tmp_path, capsys,
                                                     monkeypatch):
    """A read-only output directory: `chmod a-w` where that binds (not as root), and a read-only file
    system (EROFS from every open under it, as a read-only mount gives) everywhere. Ray never starts."""
    from cli import main

    raw, _ = small_raw_corpus
    out = tmp_path / "ro"
    out.mkdir()
    if how == "chmod":
        if os.geteuid() == 0:
            pytest.skip("root writes through chmod a-w; the erofs case covers this run")
        out.chmod(0o555)
    else:
        real_open = os.open

        def read_only_open(path, flags, *args, **kwargs):
            if str(path).startswith(str(out)) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
                raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
            return real_open(path, flags, *args, **kwargs)

        monkeypatch.setattr(os, "open", read_only_open)
    monkeypatch.setattr("pipeline.ray_runtime.ensure_ray", _ray_must_not_start)
    try:
        code = main(["ingest", "--input", str(raw), "--out", str(out), "--tokenizer", str(tiny_model)])
    finally:
        out.chmod(0o755)
    err = capsys.readouterr().err
    assert code == 1
    line = _one_line_error(err, str(out))
    assert ("Permission denied" if how == "chmod" else "Read-only file system") in line
    assert not any(out.iterdir()), "something was written into the read-only directory"


def _ray_must_not_start(*args, **kwargs):
    raise AssertionError("Ray was started although the output directory is not writable")


@pytest.mark.parametrize("stage", ["bin_write", "idx", "provenance", "checksum"])
def test_disk_full_while_closing_a_shard_leaves_nothing_visible(stage, tmp_path, monkeypatch):
    import numpy as np

    import shards.token_shards as token_shards

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp_path / "s" / f"x.{stage}"))

    prefix = tmp_path / "s" / "shard-00000"
    writer = TokenShardWriter(prefix)
    for i in range(5):
        writer.add(np.arange(10 + i, dtype=np.int32), doc_id=f"d{i}", source="pile", input_file="in.jsonl")
    if stage == "bin_write":
        monkeypatch.setattr(writer, "_bin", _FullFile(writer._bin))
    elif stage == "idx":
        monkeypatch.setattr(token_shards, "write_index", full)
    elif stage == "provenance":
        monkeypatch.setattr(token_shards.pq, "ParquetWriter", full)  # the sidecar is streamed through one
    else:
        monkeypatch.setattr(token_shards, "atomic_write_json", full)
    with pytest.raises(OSError) as info:
        writer.close()
    assert info.value.errno == errno.ENOSPC
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == [], "a partial shard (or temp file) was left"


class _FullFile:
    """A file object whose flush fails as on a full disk (what a buffered write hits at close)."""

    def __init__(self, handle):
        self._handle = handle

    def flush(self):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def __getattr__(self, name):
        return getattr(self._handle, name)


def test_disk_full_while_writing_final_shards_is_a_clear_error(
    ray_session, small_raw_corpus, tiny_model, tmp_path, monkeypatch, capsys
):
    """ENOSPC in the driver's final-shard phase (in this process, so it can be injected)."""
    import shards.token_shards as token_shards
    from cli import main

    raw, _ = small_raw_corpus
    out = tmp_path / "out"
    real = token_shards.atomic_write_json
    target = out / "wudao"

    def maybe_full(path, obj):
        if Path(path).parent == target:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return real(path, obj)

    monkeypatch.setattr(token_shards, "atomic_write_json", maybe_full)
    code = main(["ingest", "--input", str(raw), "--out", str(out), "--tokenizer", str(tiny_model),
                 "--workers", "2"])
    assert code == 1
    line = _one_line_error(capsys.readouterr().err, str(target))
    assert "No space left on device" in line
    assert not (out / "manifest.json").exists()
    assert not half_written_shards(out), half_written_shards(out)
    assert not list(target.glob("*.bin")), "the failed shard's .bin is still visible"
    assert len(list((out / "work").glob("*/done.json"))) == 3  # the per-file work survived, sealed
    # Space is back: the same command resumes from the sealed work shards and finishes.
    monkeypatch.setattr(token_shards, "atomic_write_json", real)
    assert main(["ingest", "--input", str(raw), "--out", str(out), "--tokenizer", str(tiny_model),
                 "--workers", "2"]) == 0
    assert verify_directory(out, progress=False)["ok"]


# ---------------------------------------------------------------------------------------------------------
# 3. A two-node Ray cluster on one machine


@NEEDS_RAY_COMMAND
def test_two_node_cluster_gives_identical_shards(baseline, small_raw_corpus, tiny_model, tmp_path):
    _, expected = baseline
    raw, _ = small_raw_corpus
    with LocalCluster(Path(f"/tmp/ray_faults_{os.getpid()}")) as cluster:
        # 2 FileWorker actors, SPREAD: one on each node, so both nodes process files.
        out = tmp_path / "cluster"
        result = cluster.ingest(raw, out, tiny_model)
        assert result.returncode == 0, result.stderr[-3000:]
        assert f"joining Ray cluster at {cluster.address}" in result.stderr
        assert shard_digest(out) == expected
        assert verify_directory(out, progress=False)["ok"]


@NEEDS_RAY_COMMAND
def test_node_killed_mid_run_still_gives_identical_shards(baseline, small_raw_corpus, tiny_model, tmp_path):
    """SIGKILL the whole second node (raylet, object store, its worker processes) while one of its
    FileWorkers is processing a file: Ray declares the node dead, restarts that actor on the head node and
    retries the file; the run finishes with the baseline's bytes."""
    _, expected = baseline
    raw, _ = small_raw_corpus
    out = tmp_path / "cluster"
    with LocalCluster(Path(f"/tmp/ray_faults_kill_{os.getpid()}")) as cluster:
        worker_node = cluster.sessions[1]
        killed: list[dict] = []
        stop = threading.Event()

        def killer() -> None:
            while not stop.is_set():
                for pid in _session_members(worker_node):
                    if "ray::FileWorker.process" in _cmdline(pid):
                        sealed = len(list((out / "work").glob("*/done.json")))
                        _kill_session(worker_node)
                        killed.append({"sealed_before": sealed, "manifest_before": (out / "manifest.json").exists()})
                        return
                time.sleep(0.005)

        thread = threading.Thread(target=killer, daemon=True)
        thread.start()
        try:
            result = cluster.ingest(raw, out, tiny_model)
        finally:
            stop.set()
            thread.join(timeout=5)
        assert killed, "no FileWorker ran on the second node: the kill never happened (test is vacuous)"
        assert not killed[0]["manifest_before"], "the node was killed after the run had finished"
        assert result.returncode == 0, result.stderr[-3000:]
        files = len(orjson.loads((out / "manifest.json").read_bytes())["inputs"])
        assert killed[0]["sealed_before"] < files, "the node was killed after every file was sealed"
        assert not _session_members(worker_node), "the second node survived its SIGKILL"
        assert shard_digest(out) == expected
        assert verify_directory(out, progress=False)["ok"]
        assert not half_written_shards(out)
