"""Keeping subdomain workers started while the service has no job (see ddray/orchestration/warm_pool.py).

The service fills the cluster's warm pool with a short Ray job whenever it has
become idle (at start, and after a job ended), asking the resource shape of the
last job it started (1 CPU, no GPU before the first). A job's driver takes the
pool's workers when it starts. While a fill runs no job is started, so a pool
never fills up while a job of this service waits for the same CPUs.
"""

from __future__ import annotations

import logging
import math
import shlex
import sys
import time
from typing import Any

from api.cluster import TERMINAL, RayCluster, nice_prefix, ray_status
from api.settings import ServiceSettings
from api.store import JobStore

log = logging.getLogger("ddray.api")

FILL_TIMEOUT_S = 120.0


class WarmWorkers:
    def __init__(self, settings: ServiceSettings, store: JobStore, cluster: RayCluster):
        self.settings, self.store, self.cluster = settings, store, cluster
        self.needed = True  # the service is new, or a job ended since the last fill
        self.shape = (1.0, 0.0)  # (cpus, gpus) per worker: the last job's
        self._fill: tuple[str, float] | None = None  # (submission id, started) of the fill job in flight
        self.filled = 0  # workers the last fill asked for

    def remember(self, config: dict[str, Any]) -> None:
        """A job starts: the next fill asks for its workers' shape."""
        res = config.get("resources") or {}
        cpus, gpus = res.get("cpus_per_subdomain", 1.0), res.get("gpus_per_subdomain", 0.0)
        if isinstance(cpus, (int, float)) and isinstance(gpus, (int, float)) and cpus > 0 and gpus >= 0:
            self.shape = (float(cpus), float(gpus))
        self.filled = 0

    def count(self) -> int:
        """Workers to keep for the current shape: the setting, else what the local head's CPUs (and GPUs) fit."""
        if self.settings.warm_workers is not None:
            return self.settings.warm_workers
        if not self.cluster.local:
            return 0
        try:
            total = self.cluster.resources().get("total", {})
        except Exception:  # noqa: BLE001 - no figure, no warm workers
            return 0
        cpus, gpus = self.shape
        n = math.floor(total.get("CPU", 0) / cpus)
        if gpus > 0:
            n = min(n, math.floor(total.get("GPU", 0) / gpus))
        return max(0, n)

    def busy(self) -> bool:
        """True while a fill runs (no job may start: its workers could wait behind the pool's)."""
        if self._fill is None:
            return False
        sid, started = self._fill
        try:
            info = self.cluster.jobs().get_job_info(sid)
            status = ray_status(info)
        except Exception:  # noqa: BLE001 - Ray lost it: nothing runs
            status = "FAILED"
        if status in TERMINAL:
            if status != "SUCCEEDED":
                log.warning("filling the warm worker pool ended %s (jobs start their own workers): %s", status, getattr(info, "message", ""))
            self._fill = None
            return False
        if time.monotonic() - started > FILL_TIMEOUT_S:
            log.warning("filling the warm worker pool took over %.0f s; stopped (jobs start their own workers)", FILL_TIMEOUT_S)
            self._stop(sid)
            self._fill = None
            return False
        return True

    def fill_if_idle(self) -> None:
        if not self.needed or self._fill is not None:
            return
        counts = self.store.count(["running", "queued"])
        if counts["running"] or counts["queued"]:
            return
        self.needed = False
        n = self.count()
        if n <= 0:
            return
        cpus, gpus = self.shape
        self._fill = (self._submit("fill", "--workers", str(n), "--cpus", f"{cpus:g}", "--gpus", f"{gpus:g}"), time.monotonic())
        self.filled = n
        log.info("keeping %d warm subdomain worker(s) (CPU %g, GPU %g each) for the next job", n, cpus, gpus)

    def drain(self) -> None:
        """The service stops on a joined cluster: its idle workers must not keep holding the cluster's CPUs."""
        if self.count() > 0 or self.filled:
            try:
                self._submit("drain")
            except Exception as err:  # noqa: BLE001 - the cluster may be gone
                log.warning("could not drain the warm worker pool: %s", err)

    def _submit(self, action: str, *args: str) -> str:
        sid = f"ddray-warm-{action}-{int(time.time() * 1000)}"
        command = [
            *nice_prefix(self.settings.job_nice if self.cluster.local else 0),
            sys.executable, "-m", "ddray.orchestration.warm_pool", action, *args, "--address", "auto",
        ]
        self.cluster.jobs().submit_job(entrypoint=shlex.join(command), submission_id=sid, metadata={"ddray_warm_pool": action})
        return sid

    def _stop(self, sid: str) -> None:
        try:
            self.cluster.jobs().stop_job(sid)
        except Exception:  # noqa: BLE001 - ended meanwhile
            pass
