"""A real multi-node Ray cluster on this machine, started the way users start one: ``ray start``.

A head and worker nodes are separate ``ray start`` processes sharing one
private ``--temp-dir``; token authentication is on, with the token in the
environment of every node and client (``env``). Stopping kills exactly the
processes whose command line names that temp dir (never the ray CLI's stop command, which
would end every Ray on the machine).
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from api.cluster import free_port, process_cmdline

RAY = str(Path(sys.executable).with_name("ray"))


def _environ(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return b""


def _stat(pid: int) -> list[str] | None:
    """[state, ppid, pgrp, session, ...] of a process, None if gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def processes_left(marker: str, wait_s: float = 20.0) -> list[str]:
    """Command lines of the live processes naming ``marker`` (e.g. an embedded Ray's RAY_TMPDIR), once
    they are gone or ``wait_s`` has passed: a worker may take a moment to notice its raylet is gone."""
    deadline = time.monotonic() + wait_s
    while (left := [pid for pid in map(int, filter(str.isdigit, os.listdir("/proc"))) if marker in process_cmdline(pid)]) and time.monotonic() < deadline:
        time.sleep(0.2)
    return [process_cmdline(pid) for pid in left]


class LocalRayCluster:
    """Head (no GPU by default) plus worker nodes with logical GPUs; ``address`` is the GCS address."""

    def __init__(self, *, head_cpus: int = 1, head_gpus: int = 0, extra_env: dict[str, str] | None = None):
        self.temp_dir = tempfile.mkdtemp(prefix="ddt-", dir="/tmp")  # short: unix socket paths are limited
        self.session: int | None = None  # a process session whose members all belong to the cluster, if any
        self.port = free_port()
        self.dashboard_port = free_port()
        self.token = secrets.token_hex(32)
        self.env = {
            **os.environ,
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN": self.token,
            "RAY_USAGE_STATS_ENABLED": "0",
            "DDRAY_TEST_CLUSTER": self.temp_dir,  # marks every process of this cluster (found again at stop)
            **(extra_env or {}),
        }
        for key in ("RAY_ADDRESS", "RAY_AUTH_TOKEN_PATH", "RAY_API_SERVER_ADDRESS", "RAY_enable_autoscaler_v2"):
            self.env.pop(key, None)
        self.head_cpus, self.head_gpus = head_cpus, head_gpus

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def _ray_start(self, args: list[str]) -> None:
        proc = subprocess.run([RAY, "start", *args], env=self.env, capture_output=True, text=True, timeout=180)
        if proc.returncode != 0:
            raise RuntimeError(f"ray start {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")

    def start_head(self) -> "LocalRayCluster":
        self._ray_start([
            "--head", "--port", str(self.port), "--node-ip-address", "127.0.0.1",
            "--num-cpus", str(self.head_cpus), "--num-gpus", str(self.head_gpus),
            "--temp-dir", self.temp_dir, "--include-dashboard=true",
            "--dashboard-host", "127.0.0.1", "--dashboard-port", str(self.dashboard_port),
            "--ray-client-server-port", str(free_port()), "--dashboard-agent-listen-port", str(free_port()),
            "--object-store-memory", str(100 * 1024 * 1024), "--disable-usage-stats",
        ])
        return self

    def add_node(self, *, cpus: int, gpus: int = 0) -> None:
        self._ray_start([
            "--address", self.address, "--node-ip-address", "127.0.0.1",
            "--num-cpus", str(cpus), "--num-gpus", str(gpus),
            "--object-store-memory", str(100 * 1024 * 1024),
            "--dashboard-agent-listen-port", str(free_port()),
        ])

    def wait_nodes(self, count: int, timeout: float = 60.0) -> list[dict]:
        """Blocks until ``count`` nodes are alive; returns them (node id, resources) as the GCS reports them."""
        code = (
            "import json, ray; ray.init(address=%r, logging_level='ERROR');"
            "print('NODES', json.dumps([{'id': n['NodeID'], 'resources': n['Resources']} for n in ray.nodes() if n['Alive']]))"
        ) % self.address
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            proc = self.python(code)
            for line in proc.stdout.splitlines():
                if line.startswith("NODES "):
                    import json

                    nodes = json.loads(line[6:])
                    if len(nodes) >= count:
                        return nodes
                    last = line
            time.sleep(1)
        raise TimeoutError(f"{count} Ray nodes not alive after {timeout:.0f} s: {last}")

    def python(self, code: str, timeout: float = 120) -> subprocess.CompletedProcess:
        """``python -c code`` as a client of this cluster (its token in the environment)."""
        return subprocess.run([sys.executable, "-c", code], env=self.env, capture_output=True, text=True, timeout=timeout)

    def processes(self) -> list[int]:
        """Every live process of this cluster: in its session, naming its temp dir, or carrying its marker."""
        marker = f"DDRAY_TEST_CLUSTER={self.temp_dir}".encode()
        pids = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            pid = int(entry.name)
            stat = _stat(pid)
            if stat is None or stat[0] == "Z":
                continue
            in_session = self.session is not None and stat[3] == str(self.session)
            if in_session or self.temp_dir in process_cmdline(pid) or marker in _environ(pid):
                pids.append(pid)
        return pids

    def stop(self) -> list[int]:
        """Kill every process of the cluster; return those still alive afterwards (should be none)."""
        left: list[int] = []
        for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 10.0)):
            for pid in self.processes():
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + wait
            while (left := self.processes()) and time.monotonic() < deadline:
                time.sleep(0.2)
            if not left:
                break
        shutil.rmtree(self.temp_dir, ignore_errors=True)
        return left
