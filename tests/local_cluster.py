"""A two-node Ray cluster on this machine, for tests that need a real multi-node run (issue 10)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _kill_session(sid: int) -> None:
    for pid in _session_members(sid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


class LocalCluster:
    """Two Ray nodes on this machine, each `ray start` in its own process session (so killing a session ends
    a node and every daemon and worker it started); 2 CPUs each, so either node can host both actors."""

    def __init__(self, temp_dir: Path) -> None:
        self.ray_bin = str(Path(sys.executable).with_name("ray"))
        self.temp_dir = temp_dir
        # Ray 2.5x+ token auth would stop the second node joining; fast health checks so a killed node is
        # declared dead within seconds rather than the default ~30 s.
        self.env = dict(os.environ, PYTHONPATH=str(ROOT), RAY_USAGE_STATS_ENABLED="0", RAY_AUTH_MODE="disabled",
                        RAY_health_check_period_ms="500", RAY_health_check_timeout_ms="1000",
                        RAY_health_check_failure_threshold="3")
        self.address = f"127.0.0.1:{_free_port()}"
        self.sessions: list[int] = []  # [head, worker]: process-session ids

    def _start(self, args: list[str]) -> None:
        common = ["--num-cpus=2", "--object-store-memory=100000000", "--node-ip-address=127.0.0.1"]
        proc = subprocess.Popen([self.ray_bin, "start", *args, *common], env=self.env, start_new_session=True,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.sessions.append(proc.pid)
        output, _ = proc.communicate(timeout=90)
        assert proc.returncode == 0, output[-3000:]

    def __enter__(self) -> LocalCluster:
        if not Path(self.ray_bin).exists():
            pytest.skip("the `ray` command is not installed beside this Python")
        port = self.address.rsplit(":", 1)[1]
        try:
            self._start(["--head", f"--port={port}", f"--dashboard-port={_free_port()}",
                         "--include-dashboard=false", f"--temp-dir={self.temp_dir}"])
            self._start([f"--address={self.address}"])
            deadline = time.monotonic() + 45
            while True:  # the autoscaler's view of the cluster lags the second `ray start` by a few seconds
                status = subprocess.run([self.ray_bin, "status", f"--address={self.address}"], env=self.env,
                                        capture_output=True, text=True, timeout=60).stdout
                if status.count(" node_") == 2 and "0.0/4.0 CPU" in status:
                    return self
                assert time.monotonic() < deadline, f"the second node never joined:\n{status[-2000:]}"
                time.sleep(1)
        except BaseException:
            self.__exit__()
            raise

    def __exit__(self, *exc: object) -> None:
        for sid in self.sessions:
            _kill_session(sid)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(_session_alive(g) for g in self.sessions):
            time.sleep(0.1)
        shutil.rmtree(self.temp_dir, ignore_errors=True)
        assert not any(_session_alive(g) for g in self.sessions), "a Ray node process outlived the test"

    def cli(self, *argv: str, timeout: int = 240) -> subprocess.CompletedProcess:
        """`glm-corpus ARGV --ray-address <this cluster>` in a subprocess (a driver of its own)."""
        return subprocess.run([sys.executable, "-m", "cli", *argv, "--ray-address", self.address],
                              env=self.env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)

    def ingest(self, raw: Path, out: Path, model: Path) -> subprocess.CompletedProcess:
        return self.cli("ingest", "--input", str(raw), "--out", str(out), "--tokenizer", str(model), "--workers", "2")


def _session_members(sid: int) -> list[int]:
    """Live processes of the process session `sid` (Ray workers get process groups of their own, but
    keep the session of the `ray start` that began their node)."""
    members = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[3]) == sid and fields[0] != "Z":
                members.append(int(entry.name))
    return members


def _session_alive(sid: int) -> bool:
    return bool(_session_members(sid))
