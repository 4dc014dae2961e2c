"""Service doubles for the REST tests and benchmarks (not part of the product).

* ``FakeRunner``: a stand-in for ``api.runner.JobRunner`` in route tests (no Ray, no process);
* ``Service``: a real ``ddray serve`` in a subprocess on 127.0.0.1, with its own state dir;
* ``tiny_job``: the small fast job config the tests submit;
* ``cleanup_state``: stops the Ray head a killed service left behind.

Tests import it as ``service_doubles`` (pytest puts ``tests/`` on ``sys.path``, as for
``raycluster``); benchmarks put ``tests/`` on ``sys.path`` themselves.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from api.cluster import free_port

TINY_JOB: dict[str, Any] = {
    "dataset": {"source": "synthetic", "kind": "count", "samples": 240, "size": [16, 16]},
    "decomposition": {"grid": [2, 2], "overlap": 0},
    "local_model": {"name": "small_cnn", "width": 0.25},
    "training": {"epochs": 3, "batch_size": 32},
    "aggregation": {"dnn": {"epochs": 20}},
    "resources": {"cpus_per_subdomain": 1},
}


def wait_for(fn: Any, timeout: float, interval: float = 0.25, what: str = "condition") -> Any:
    """``fn()``'s first true value, polled every ``interval`` seconds; TimeoutError naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(interval)
    raise TimeoutError(f"{what} not reached in {timeout:.0f} s (last: {last})")


def tiny_job(epochs: int = 3, **dataset: Any) -> dict[str, Any]:
    """The small fast job of the tests; many epochs make a job that runs long enough to cancel."""
    return {
        **TINY_JOB,
        "dataset": {**TINY_JOB["dataset"], **dataset},
        "training": {**TINY_JOB["training"], "epochs": epochs},
    }


class FakeRunner:
    """Stands in for JobRunner in route tests: records calls, never starts Ray or a process."""

    def __init__(self) -> None:
        self.started = False
        self.stopped = False
        self.wakes = 0

    async def start(self) -> None:
        self.started = True

    async def stop(self) -> None:
        self.stopped = True

    def wake(self) -> None:
        self.wakes += 1

    async def health(self) -> dict[str, Any]:
        return {"status": "paused"}

    def logs(self, record: Any) -> str:
        return ""


class Service:
    """``python -m ddray serve`` on 127.0.0.1 in a subprocess, with its own state dir."""

    def __init__(
        self,
        state_dir: Path,
        data_root: Path,
        token: str = "test-token-0123456789abcdef",
        *,
        extra_args: list[str] | None = None,
        env: dict[str, str] | None = None,
        warm_workers: int | None = 0,
    ):
        """``warm_workers``: DDRAY_WARM_WORKERS; 0 (none) unless a test is about them, so the other
        tests' jobs start the way they always did; None = the service's default."""
        self.state_dir = Path(state_dir)
        self.data_root = Path(data_root)
        self.token = token
        self.extra_args = extra_args or []
        self.env = {**({} if warm_workers is None else {"DDRAY_WARM_WORKERS": str(warm_workers)}), **(env or {})}
        self.port = 0
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def client(self, timeout: float = 30.0) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers=self.headers, timeout=timeout)

    def start(self, wait_ray: bool = True, timeout: float = 120.0) -> "Service":
        self.port = free_port()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "DDRAY_API_TOKEN": self.token, "DDRAY_DATA_ROOTS": str(self.data_root), **self.env}
        log = open(self.state_dir / f"service-{self.port}.log", "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ddray", "serve", "--host", "127.0.0.1", "--port", str(self.port), "--state-dir", str(self.state_dir), *self.extra_args],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        log.close()
        self.wait_healthy(wait_ray=wait_ray, timeout=timeout)
        return self

    def wait_healthy(self, wait_ray: bool = True, timeout: float = 120.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"the service exited with code {self.proc.returncode}: {self.log_text()[-3000:]}")
            try:
                last = httpx.get(f"{self.url}/healthz", timeout=5).json()
                if last.get("status") == "ok" or (not wait_ray and last.get("status") == "starting"):
                    return last
                if last.get("status") == "degraded":
                    raise RuntimeError(f"service degraded: {last}")
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise TimeoutError(f"service not healthy after {timeout:.0f} s: {last}; log: {self.log_text()[-3000:]}")

    def log_text(self) -> str:
        return "".join(p.read_text(errors="replace") for p in sorted(self.state_dir.glob("service-*.log")))

    def stop(self, timeout: float = 60.0) -> int | None:
        """Graceful: SIGTERM, as a process manager would."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(timeout=10)

    def kill(self) -> None:
        """A crash: SIGKILL, no clean-up by the service."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


def cleanup_state(state_dir: Path, token: str = "test-token-0123456789abcdef") -> None:
    """Stop the local Ray head a killed service left behind in ``state_dir`` (its jobs end with it)."""
    from api.cluster import RayCluster
    from api.settings import ServiceSettings

    RayCluster(ServiceSettings(api_token=token, state_dir=state_dir)).stop_leftover_head()
