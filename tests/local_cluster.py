"""A two-node Ray cluster on this machine, for tests and benchmarks that need a real multi-node run."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

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


def ray_command() -> str:
    return str(Path(sys.executable).with_name("ray"))


class LocalCluster:
    """Two Ray nodes on this machine, each `ray start` in its own process session (so killing a session ends
    a node and every daemon and worker it started). 2 CPUs each by default, so either node can host both of
    the ingest's actors when the other is lost."""

    def __init__(self, temp_dir: Path, cpus_per_node: int = 2, object_store_bytes: int = 100_000_000,
                 env: dict[str, Any] | None = None) -> None:
        self.ray_bin = ray_command()
        if not Path(self.ray_bin).exists():
            raise RuntimeError(f"the `ray` command is not installed beside this Python ({self.ray_bin})")
        self.temp_dir, self.cpus, self.object_store_bytes = temp_dir, cpus_per_node, object_store_bytes
        # Ray 2.5x+ token auth would stop the second node joining; fast health checks so a killed node is
        # declared dead within seconds rather than the default ~30 s.
        self.env = dict(env if env is not None else os.environ, PYTHONPATH=str(ROOT), RAY_USAGE_STATS_ENABLED="0",
                        RAY_AUTH_MODE="disabled", RAY_health_check_period_ms="500",
                        RAY_health_check_timeout_ms="1000", RAY_health_check_failure_threshold="3")
        self.address = f"127.0.0.1:{_free_port()}"
        self.sessions: list[int] = []  # [head, worker]: process-session ids

    def _start(self, args: list[str]) -> None:
        common = [f"--num-cpus={self.cpus}", f"--object-store-memory={self.object_store_bytes}",
                  "--node-ip-address=127.0.0.1"]
        proc = subprocess.Popen([self.ray_bin, "start", *args, *common], env=self.env, start_new_session=True,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.sessions.append(proc.pid)
        output, _ = proc.communicate(timeout=120)
        if proc.returncode != 0:
            raise RuntimeError(f"`ray start` failed:\n{output[-3000:]}")

    def __enter__(self) -> LocalCluster:
        port = self.address.rsplit(":", 1)[1]
        idle = f"0.0/{2 * self.cpus}.0 CPU"
        try:
            self._start(["--head", f"--port={port}", f"--dashboard-port={_free_port()}",
                         "--include-dashboard=false", f"--temp-dir={self.temp_dir}"])
            self._start([f"--address={self.address}"])
            deadline = time.monotonic() + 60
            while True:  # the autoscaler's view of the cluster lags the second `ray start` by a few seconds
                status = subprocess.run([self.ray_bin, "status", f"--address={self.address}"], env=self.env,
                                        capture_output=True, text=True, timeout=60).stdout
                if status.count(" node_") == 2 and idle in status:
                    return self
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the second node never joined:\n{status[-2000:]}")
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
        if any(_session_alive(g) for g in self.sessions):
            raise RuntimeError("a Ray node process outlived its SIGKILL")

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
