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
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from pipeline.ingest import IngestConfig, run_ingest
from shards.token_shards import TokenShardWriter
from shards.verify import verify_directory

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
        monkeypatch.setattr(token_shards.pq, "write_table", full)
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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def test_two_node_cluster_gives_identical_shards(baseline, small_raw_corpus, tiny_model, tmp_path):
    _, expected = baseline
    raw, _ = small_raw_corpus
    ray_bin = str(Path(sys.executable).with_name("ray"))
    if not Path(ray_bin).exists():
        pytest.skip("the `ray` command is not installed beside this Python")
    temp_dir = Path(f"/tmp/ray_faults_{os.getpid()}")
    env = dict(os.environ, PYTHONPATH=str(ROOT), RAY_USAGE_STATS_ENABLED="0",
               RAY_AUTH_MODE="disabled")  # Ray 2.5x+ token auth would stop the second node joining
    port = _free_port()
    address = f"127.0.0.1:{port}"
    common = ["--num-cpus=1", "--object-store-memory=100000000", "--node-ip-address=127.0.0.1"]
    groups: list[int] = []

    def start(args: list[str]) -> None:
        # A new session per node: its daemons inherit the process group, so one killpg removes them all.
        proc = subprocess.Popen([ray_bin, "start", *args, *common], env=env, start_new_session=True,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        groups.append(proc.pid)
        output, _ = proc.communicate(timeout=90)
        assert proc.returncode == 0, output[-3000:]

    try:
        start(["--head", f"--port={port}",
               f"--dashboard-port={_free_port()}", "--include-dashboard=false", f"--temp-dir={temp_dir}"])
        start([f"--address={address}"])
        deadline = time.monotonic() + 45
        while True:  # the autoscaler's view of the cluster lags the second `ray start` by a few seconds
            status = subprocess.run([ray_bin, "status", f"--address={address}"], env=env, capture_output=True,
                                    text=True, timeout=60).stdout
            if status.count(" node_") == 2 and "0.0/2.0 CPU" in status:
                break
            assert time.monotonic() < deadline, f"the second node never joined:\n{status[-2000:]}"
            time.sleep(1)
        # 2 workers x 1 CPU each on 2 nodes of 1 CPU: one FileWorker actor runs on each node.
        out = tmp_path / "cluster"
        result = subprocess.run(
            [sys.executable, "-m", "cli", "ingest", "--input", str(raw), "--out", str(out), "--tokenizer",
             str(tiny_model), "--workers", "2", "--ray-address", address],
            env=env, cwd=ROOT, capture_output=True, text=True, timeout=180,
        )
        assert result.returncode == 0, result.stderr[-3000:]
        assert f"joining Ray cluster at {address}" in result.stderr
        assert shard_digest(out) == expected
        assert verify_directory(out, progress=False)["ok"]
    finally:
        for pgid in groups:
            _kill_group(pgid)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(_group_alive(g) for g in groups):
            time.sleep(0.1)
        shutil.rmtree(temp_dir, ignore_errors=True)
    assert not any(_group_alive(g) for g in groups), "a Ray node process outlived the test"


def _group_alive(pgid: int) -> bool:
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid and fields[0] != "Z":
                return True
    return False
