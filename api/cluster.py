"""The Ray cluster the jobs run on: one the service joins, or a local head it owns.

Jobs are Ray jobs (Ray's Job Submission API, served by the head's dashboard),
so the service needs the cluster's dashboard, and for ``/healthz`` its GCS.

* **Joined** (``DDRAY_RAY_ADDRESS`` / ``--ray-address``): ``auto`` (the
  cluster of this machine, e.g. the head made by ``ray up``), a GCS address
  ``host:port``, or a dashboard URL ``http://host:8265``. Ray's token
  authentication works as for any Ray client: ``RAY_AUTH_MODE=token`` and
  ``RAY_AUTH_TOKEN`` / ``RAY_AUTH_TOKEN_PATH`` (default ``~/.ray/auth_token``)
  in the service's environment. The service never stops a cluster it joined.
* **Local head** (no address): ``ray start --head --block`` in its own process
  session, dashboard on 127.0.0.1, Ray's token authentication on with a fresh
  token in ``<state_dir>/ray/auth_token`` (mode 0600) and a private temp dir,
  so ``ray.init()`` elsewhere on the machine does not find (and join) it.
  ``<state_dir>/ray/head.json`` records it: a service that crashed finds its
  head still running at the next start and adopts it, jobs included; a
  graceful stop of the service stops the head.

The web process never joins the cluster as a driver: it talks HTTP to the Jobs
API and reads resources through Ray's GCS state client (no worker, no tasks).
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

TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")  # Ray job statuses that end a job


def ray_status(info: Any) -> str:
    """A Ray job's status as its plain name (``JobStatus`` is an enum)."""
    return str(getattr(info.status, "value", info.status))


def free_port() -> int:
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


# -- the private Ray APIs the service needs (ray is pinned to 2.60) --------------------
def _reload_ray_config() -> None:
    """Make Ray's client code in this process see the ``RAY_AUTH_*`` variables set after ``import ray``.

    Ray reads its config (token auth mode included) once per process and caches
    it; the service sets the variables only when it starts or joins a cluster.
    Ray 2.60 has no public call to re-read it: ``ray.init`` would make this
    process a driver, and Ray's own ``_enable_token_auth`` does exactly this.
    """
    from ray._raylet import Config

    Config.initialize("")


def _gcs_state(address: str):
    """Ray's GCS state client (cluster/available resources, nodes) without joining as a driver.

    Private: Ray 2.60's public resource calls (``ray.cluster_resources`` /
    ``ray.available_resources``) need ``ray.init``, and ``ray.util.state.list_nodes``
    (a developer API through the dashboard) has no available resources.
    ``address`` may be ``auto`` or host:port; this call resolves it.
    """
    from ray._private.internal_api import get_state_from_address

    return get_state_from_address(address)


def _ray_executable() -> str:
    beside = Path(sys.executable).with_name("ray")
    return str(beside) if beside.exists() else "ray"


class RayCluster:
    """Starts, adopts or joins the cluster; hands out its Jobs client; reports its resources."""

    def __init__(self, settings: ServiceSettings):
        self.settings = settings
        self.address: str | None = None  # GCS address: host:port, or `auto` as given to --ray-address; None if joined by dashboard URL
        self.dashboard_url: str | None = None
        self.status = "stopped"
        self.error: str | None = None
        self.adopted = False  # the local head outlived a crashed service and was taken over
        self._proc: subprocess.Popen | None = None
        self._head_pid: int | None = None
        self._temp_dir: str | None = None
        self._state = None
        self._jobs = None
        self._lock = threading.Lock()
        self._cache: tuple[float, dict[str, Any]] | None = None
        self.ray_dir = settings.state_dir / "ray"
        self.token_path = self.ray_dir / "auth_token"
        self.head_info = self.ray_dir / "head.json"

    @property
    def local(self) -> bool:
        return not self.settings.ray_address

    @property
    def ready(self) -> bool:
        if self.status == "running" and self.local and not self._head_alive():
            self.status = "error"
            self.error = f"the local Ray head exited; see {self.ray_dir / 'head.log'}"
        return self.status in ("running", "external")

    def _head_alive(self) -> bool:
        if self._proc is not None:
            return self._proc.poll() is None
        return bool(self._head_pid and self._temp_dir and self._temp_dir in process_cmdline(self._head_pid))

    # -- start and stop ------------------------------------------------------------
    def start(self) -> None:
        """Blocking: join the configured cluster, or adopt/start the local head, and reach its Jobs API."""
        self.status = "starting"
        try:
            if self.local:
                if not self._adopt_head():
                    self._start_head()
                self._use_env()
                self.jobs()  # the dashboard answers
                self.status = "running"
            else:
                self._use_env()
                self._join(self.settings.ray_address or "auto")
                self.status = "external"
        except Exception as err:  # reported by /healthz; jobs stay queued
            self.error = str(err)
            log.error("could not reach the Ray cluster: %s", err)
            if self.local and not self.adopted:
                self.stop()
            self.status = "error"

    def _use_env(self) -> None:
        """Ray's client code in this process reads token auth from the environment."""
        if self.local:
            os.environ.update({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(self.token_path)})
            os.environ.pop("RAY_AUTH_TOKEN", None)
        _reload_ray_config()

    def _join(self, address: str) -> None:
        if address.startswith("ray://"):
            raise ValueError(
                f"DDRAY_RAY_ADDRESS={address}: Ray Client addresses cannot submit jobs; give 'auto', the GCS address "
                "host:6379 or the dashboard URL http://host:8265"
            )
        if "://" in address:
            self.dashboard_url = address.rstrip("/")
        else:  # `auto` or host:port: JobSubmissionClient and the GCS state client resolve it themselves
            self.address = address
        self.jobs()
        log.info("joined the Ray cluster at %s (Jobs API %s)", self.address or "?", self.dashboard_url or "via GCS")

    def _adopt_head(self) -> bool:
        """Take over the head a crashed service left running (same state dir); False when there is none."""
        if not self.head_info.exists():
            return False
        try:
            info = json.loads(self.head_info.read_text())
            pid, temp_dir = int(info["pid"]), str(info["temp_dir"])
            address, dashboard = str(info["address"]), str(info["dashboard_url"])
        except (ValueError, KeyError, OSError):
            self.stop_leftover_head()
            return False
        if temp_dir not in process_cmdline(pid) or not self.token_path.exists():
            self.stop_leftover_head()
            return False
        self._head_pid, self._temp_dir, self.address, self.dashboard_url = pid, temp_dir, address, dashboard
        self.adopted = True
        log.warning("adopted the local Ray head a previous service left running (pid %s); its jobs are re-attached", pid)
        return True

    def _start_head(self) -> None:
        self.ray_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.token_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_hex(32))
        # a short private temp dir: Ray's unix sockets live under it (path length limit)
        self._temp_dir = tempfile.mkdtemp(prefix="ddray-ray-", dir="/tmp")
        port, dashboard_port = free_port(), free_port()
        cmd = [
            _ray_executable(), "start", "--head", "--block",
            "--port", str(port),
            "--node-ip-address", "127.0.0.1",
            "--ray-client-server-port", str(free_port()),
            "--dashboard-agent-listen-port", str(free_port()),
            "--include-dashboard=true",
            "--dashboard-host", "127.0.0.1",
            "--dashboard-port", str(dashboard_port),
            "--disable-usage-stats",
            "--temp-dir", self._temp_dir,
        ]
        if self.settings.ray_num_cpus:
            cmd += ["--num-cpus", str(self.settings.ray_num_cpus)]
        if self.settings.ray_object_store_mb:
            cmd += ["--object-store-memory", str(self.settings.ray_object_store_mb * 1024 * 1024)]
        cmd = nice_prefix(self.settings.job_nice) + cmd
        env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(self.token_path), "RAY_USAGE_STATS_ENABLED": "0"}
        for key in ("DDRAY_API_TOKEN", "RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "RAY_AUTH_TOKEN"):
            env.pop(key, None)
        with open(self.ray_dir / "head.log", "ab") as log_file:
            self._proc = subprocess.Popen(
                cmd, env=env, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
            )
        self._head_pid = self._proc.pid
        self.address = f"127.0.0.1:{port}"
        self.dashboard_url = f"http://127.0.0.1:{dashboard_port}"
        self.head_info.write_text(json.dumps(
            {"pid": self._proc.pid, "temp_dir": self._temp_dir, "address": self.address, "dashboard_url": self.dashboard_url}
        ))
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
        log.info("local Ray head up at %s, dashboard %s (token auth on)", self.address, self.dashboard_url)

    def stop_leftover_head(self) -> None:
        """Stop a head a crashed service left behind (same state dir) that cannot be adopted."""
        if not self.head_info.exists():
            return
        try:
            info = json.loads(self.head_info.read_text())
            if stop_process_group(int(info["pid"]), str(info["temp_dir"]), grace_s=10):
                log.warning("stopped a Ray head left behind by a previous service (pid %s)", info["pid"])
            shutil.rmtree(info["temp_dir"], ignore_errors=True)
        except (ValueError, KeyError, OSError):
            pass
        self.head_info.unlink(missing_ok=True)

    def stop(self) -> None:
        """Stop the local head (a joined cluster is left alone)."""
        with self._lock:
            self._state = None
            self._jobs = None
        if not self.local:
            return
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
        elif self._head_pid and self._temp_dir:  # an adopted head: not our child
            stop_process_group(self._head_pid, self._temp_dir, grace_s=20)
        self._head_pid = None
        self.head_info.unlink(missing_ok=True)
        if self._temp_dir:
            shutil.rmtree(self._temp_dir, ignore_errors=True)
            self._temp_dir = None
        self.status = "stopped"

    # -- clients -------------------------------------------------------------------
    def jobs(self):
        """Ray's ``JobSubmissionClient`` for this cluster (made once; it checks the dashboard answers)."""
        with self._lock:
            if self._jobs is None:
                from ray.job_submission import JobSubmissionClient

                deadline = time.monotonic() + self.settings.ray_start_timeout_s
                while True:
                    try:
                        self._jobs = JobSubmissionClient(self.dashboard_url or self.address)
                        break
                    except Exception as err:  # the dashboard comes up a little after the GCS
                        if time.monotonic() > deadline:
                            raise RuntimeError(f"the Ray Jobs API at {self.dashboard_url or self.address} did not answer: {err}") from None
                        time.sleep(0.5)
            return self._jobs

    def resources(self, max_age_s: float = 1.0) -> dict[str, Any]:
        """{"total": {...}, "available": {...}, "nodes": n}; blocking (GCS round trips), cached briefly."""
        if not self.ready or not self.address:
            return {}
        now = time.monotonic()
        if self._cache and now - self._cache[0] < max_age_s:
            return self._cache[1]
        with self._lock:
            if self._state is None:
                self._state = _gcs_state(self.address)
            state = self._state
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
