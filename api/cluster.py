"""The Ray cluster the jobs run on: a local head the service owns, or a configured address.

The local head is ``ray start --head --block`` in its own process session with
Ray's token authentication on: the service writes a fresh random token to
``<state_dir>/ray/auth_token`` (mode 0600) and hands ``RAY_AUTH_MODE=token``
and ``RAY_AUTH_TOKEN_PATH`` to the head and to every job driver. The head's
temp dir is private, so ``ray.init()`` elsewhere on the machine does not find
(and join) it. Stopping the service stops the head; a head left behind by a
crashed service is found through ``<state_dir>/ray/head.json`` and stopped at
the next start.

The web process never joins the cluster as a driver: it reads resources
through Ray's GCS state client only (no worker, no tasks).
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from api.settings import ServiceSettings

log = logging.getLogger("ddray.api")

RAY_ENV_KEYS = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def nice_prefix(niceness: int) -> list[str]:
    """``nice -n N`` before a command (workers Ray forks inherit it), or nothing."""
    nice = shutil.which("nice")
    return [nice, "-n", str(niceness)] if niceness > 0 and nice else []


def process_cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def stop_process_group(pid: int, marker: str, grace_s: float = 10.0) -> bool:
    """SIGTERM the leader ``pid`` (if its command line holds ``marker``), then SIGKILL what is left of its group."""
    if not marker or marker not in process_cmdline(pid):
        return False
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and marker in process_cmdline(pid):
        time.sleep(0.1)
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    return True


class RayCluster:
    """Starts/stops the local head (if any) and reports the cluster's resources."""

    def __init__(self, settings: ServiceSettings):
        self.settings = settings
        self.address: str | None = settings.ray_address
        self.status = "external" if settings.ray_address else "stopped"
        self.error: str | None = None
        self._proc: subprocess.Popen | None = None
        self._temp_dir: str | None = None
        self._state = None
        self._lock = threading.Lock()
        self._cache: tuple[float, dict[str, Any]] | None = None
        self.ray_dir = settings.state_dir / "ray"
        self.token_path = self.ray_dir / "auth_token"

    @property
    def ready(self) -> bool:
        if self.status == "running" and self._proc is not None and self._proc.poll() is not None:
            self.status = "error"
            self.error = f"the local Ray head exited (code {self._proc.returncode}); see {self.ray_dir / 'head.log'}"
        return self.status in ("running", "external")

    @property
    def local(self) -> bool:
        return not self.settings.ray_address

    # -- environment of drivers ------------------------------------------
    def driver_env(self) -> dict[str, str]:
        """Variables a job driver needs to join this cluster (token auth included)."""
        if self.local:
            return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(self.token_path)}
        return {}

    # -- local head ----------------------------------------------------------
    def start(self) -> None:
        """Blocking: start the local head and wait until it accepts drivers."""
        if not self.local:
            self.status = "external"
            return
        self.status = "starting"
        try:
            self._start_head()
            self.status = "running"
        except Exception as err:  # reported by /healthz; jobs stay queued
            self.status = "error"
            self.error = str(err)
            log.error("could not start the local Ray head: %s", err)
            self.stop()
            self.status = "error"

    def _start_head(self) -> None:
        self.ray_dir.mkdir(parents=True, exist_ok=True)
        self.stop_leftover_head()
        fd = os.open(self.token_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_hex(32))
        # a short private temp dir: Ray's unix sockets live under it (path length limit)
        self._temp_dir = tempfile.mkdtemp(prefix="ddray-ray-", dir="/tmp")
        port = _free_port()
        cmd = [
            str(Path(sys.executable).with_name("ray")) if Path(sys.executable).with_name("ray").exists() else "ray",
            "start", "--head", "--block",
            "--port", str(port),
            "--node-ip-address", "127.0.0.1",
            "--ray-client-server-port", str(_free_port()),
            "--dashboard-agent-listen-port", str(_free_port()),
            "--include-dashboard=false",
            "--disable-usage-stats",
            "--temp-dir", self._temp_dir,
        ]
        if self.settings.ray_num_cpus:
            cmd += ["--num-cpus", str(self.settings.ray_num_cpus)]
        cmd = nice_prefix(self.settings.job_nice) + cmd
        if self.settings.ray_object_store_mb:
            cmd += ["--object-store-memory", str(self.settings.ray_object_store_mb * 1024 * 1024)]
        env = {**os.environ, **self.driver_env(), "RAY_USAGE_STATS_ENABLED": "0"}
        env.pop("DDRAY_API_TOKEN", None)
        env.pop("RAY_ADDRESS", None)
        log_file = open(self.ray_dir / "head.log", "ab")
        self._proc = subprocess.Popen(cmd, env=env, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        log_file.close()
        (self.ray_dir / "head.json").write_text(json.dumps({"pid": self._proc.pid, "temp_dir": self._temp_dir}))
        marker = Path(self._temp_dir) / "ray_current_cluster"
        deadline = time.monotonic() + self.settings.ray_start_timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                tail = (self.ray_dir / "head.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"ray start exited with code {self._proc.returncode}: {tail}")
            if marker.exists() and marker.read_text().strip():
                break
            time.sleep(0.2)
        else:
            raise RuntimeError(f"the local Ray head did not come up within {self.settings.ray_start_timeout_s:g} s")
        self.address = f"127.0.0.1:{port}"
        log.info("local Ray head up at %s (token auth on)", self.address)

    def stop_leftover_head(self) -> None:
        """Stop a head a crashed service left behind (same state dir)."""
        info_path = self.ray_dir / "head.json"
        if not info_path.exists():
            return
        try:
            info = json.loads(info_path.read_text())
            if stop_process_group(int(info["pid"]), str(info["temp_dir"]), grace_s=10):
                log.warning("stopped a Ray head left behind by a previous service (pid %s)", info["pid"])
            shutil.rmtree(info["temp_dir"], ignore_errors=True)
        except (ValueError, KeyError, OSError):
            pass
        info_path.unlink(missing_ok=True)

    def stop(self) -> None:
        with self._lock:
            self._state = None
        if self._proc is not None:
            if self._proc.poll() is None:
                self._proc.send_signal(signal.SIGTERM)  # `ray start --block` stops its node on SIGTERM
                try:
                    self._proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    pass
            try:  # whatever of the node is still there
                os.killpg(self._proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            if self._proc.poll() is None:
                self._proc.wait(timeout=10)
            self._proc = None
            (self.ray_dir / "head.json").unlink(missing_ok=True)
        if self._temp_dir:
            shutil.rmtree(self._temp_dir, ignore_errors=True)
            self._temp_dir = None
        if self.local:
            self.status = "stopped"

    # -- health ----------------------------------------------------------------
    def resources(self, max_age_s: float = 1.0) -> dict[str, Any]:
        """{"total": {...}, "available": {...}, "nodes": n}; blocking (GCS round trips), cached briefly."""
        if not self.ready or not self.address:
            return {}
        now = time.monotonic()
        if self._cache and now - self._cache[0] < max_age_s:
            return self._cache[1]
        with self._lock:
            state = self._state or self._connect()
            total = state.cluster_resources()
            available = state.available_resources()
            nodes = len(state.total_resources_per_node())
        keep = ("CPU", "GPU", "memory", "object_store_memory")
        out = {
            "total": {k: v for k, v in total.items() if k in keep},
            "available": {k: available.get(k, 0.0) for k in keep if k in total},
            "nodes": nodes,
        }
        self._cache = (now, out)
        return out

    def _connect(self):
        os.environ.update(self.driver_env())
        from ray._private.internal_api import get_state_from_address  # GCS state client, no driver
        from ray._raylet import Config

        Config.initialize("")  # pick up RAY_AUTH_MODE set above
        self._state = get_state_from_address(self.address)
        return self._state
