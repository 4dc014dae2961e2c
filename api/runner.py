"""The job runner: ddray jobs as Ray jobs, with the service's database as their domain record.

Each ddray job is submitted through Ray's Job Submission API as a Ray job
(submission id ``ddray-<job id>``) whose entrypoint is the ddray driver,
``python -m ddray run CONFIG --output RUN --run-id <job id> --address auto``.
Ray runs the driver on the head node; status, logs and stop come from Ray
Jobs, so ``ray job list`` and the dashboard show every ddray job too. The
database keeps what Ray does not: the config, the submission id, where the
run lives (``<storage>/<job id>`` when storage is configured, else the run
folder on the head) and a summary of the results.

* Queue: jobs start in submission order while fewer than
  ``max_concurrent_jobs`` run (counted in the database, so several service
  instances sharing one database share the limit, approximately).
* Cancel: ``stop_job``; Ray sends SIGTERM to the driver (which ends the run
  as cancelled and keeps its work), SIGKILL after ``cancel_grace_s``.
* Restart: a new service re-attaches the jobs it had left running; jobs
  still running in Ray keep running and end with their real status.
* Stop of the service: jobs on a joined cluster keep running (the next start
  re-attaches them). With the service's own local head, a graceful stop ends
  them ("the service stopped while the job was running") and stops the head;
  a crash leaves both running, and the next start adopts them.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shlex
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any, Protocol

import yaml

from api.cluster import TERMINAL, RayCluster, nice_prefix, ray_status
from api.settings import ServiceSettings
from api.store import JobRecord, JobStore
from api.warm import WarmWorkers
from ddray import storage

log = logging.getLogger("ddray.api")

STOPPED = "the service stopped while the job was running; resubmit the job"
STOPPED_OUTSIDE = "the Ray job was stopped outside the service (ray job stop or the dashboard)"
LOST = "Ray no longer knows this job (its cluster was restarted or replaced); resubmit the job"


class Runner(Protocol):
    """What the routes need from a runner (the fake of the route tests implements the same)."""

    async def start(self) -> None: ...
    async def stop(self) -> None: ...
    def wake(self) -> None: ...
    async def health(self) -> dict[str, Any]: ...
    def logs(self, record: JobRecord) -> str: ...


def job_paths(job_dir: Path) -> dict[str, Path]:
    return {"config": job_dir / "config.yaml", "log": job_dir / "log.txt", "run": job_dir / "run"}


def submission_id(job_id: str) -> str:
    return f"ddray-{job_id}"


def run_locations(record: JobRecord) -> list[str]:
    """Where a job's run folder can be read, nearest first: the run folder on the head, then its storage prefix."""
    places = []
    if record.job_dir:
        places.append(str(job_paths(Path(record.job_dir))["run"]))
    if record.run_location and record.run_location not in places:
        places.append(record.run_location)
    return places


def failure_reason(log_text: str, message: str | None, exit_code: int | None) -> str:
    """The most useful sentence about why a driver failed: its 'error:' line, else Ray's message or the log's end."""
    lines = [line.rstrip() for line in log_text[-64 * 1024:].splitlines() if line.strip()]
    for i in range(len(lines) - 1, -1, -1):
        if lines[i].startswith(("error:", "failed:")):
            first = lines[i].split(":", 1)[1]
            return " ".join([first.strip(), *(part.strip() for part in lines[i + 1:])])[:4000]
    tail = lines[-1] if lines else "no output"
    return f"{message or 'the driver failed'} (exit code {exit_code}): {tail}"[:4000]


def driver_command(config: dict[str, Any]) -> str:
    """The ddray command a job runs: ``sweep`` for a config with a ``sweep:`` section (every combination,
    its results are the sweep table), else ``run``."""
    return "sweep" if config.get("sweep") else "run"


def results_summary(results: dict[str, Any]) -> dict[str, Any]:
    """The few numbers a job list shows: test accuracy of each aggregation and the mean local one, timings;
    for a sweep (its sweep.json) the runs done and the mean accuracies of each setting."""
    if results.get("kind") == "sweep":
        means = [{k: v for k, v in row.items() if not k.endswith(("_std", "_wall_mean"))} for row in results.get("table") or []]
        return {"sweep": {"runs_done": results.get("done"), "runs": results.get("total"), "settings": means[:50]}}
    local = [e.get("test_accuracy") for e in results.get("local") or [] if isinstance(e.get("test_accuracy"), (int, float))]
    return {
        "aggregation": {m: v.get("test_accuracy") for m, v in (results.get("aggregation") or {}).items() if isinstance(v, dict)},
        "local_mean_test_accuracy": round(sum(local) / len(local), 4) if local else None,
        "timings_s": results.get("timings_s") or {},
    }


class JobRunner:
    def __init__(self, settings: ServiceSettings, store: JobStore, cluster: RayCluster | None = None):
        self.settings = settings
        self.store = store
        self.cluster = cluster or RayCluster(settings)
        self.owner = f"{socket.gethostname()}:{settings.state_dir}"
        self._task: asyncio.Task | None = None
        self._cluster_task: asyncio.Future | None = None
        self._wake: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tick_lock = threading.Lock()  # ticks (worker thread) and the final stop never overlap
        self._stop_sent: set[str] = set()
        self._over_time: dict[str, str] = {}  # submission id -> why the service stopped it
        self._stopping = False
        self.warm = WarmWorkers(settings, store, self.cluster)

    # -- lifecycle ---------------------------------------------------------
    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self.settings.jobs_dir.mkdir(parents=True, exist_ok=True)
        if self.settings.max_concurrent_jobs > 0 or not self.cluster.local or self.store.count(["running"])["running"]:
            self._cluster_task = asyncio.ensure_future(asyncio.to_thread(self.cluster.start))
        else:
            self.cluster.status = "paused"  # max_concurrent_jobs=0: jobs are only recorded, no Ray needed
        self._task = asyncio.create_task(self._run_loop(), name="ddray-job-runner")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        if self._cluster_task is not None:
            await asyncio.wait([self._cluster_task])
        await asyncio.to_thread(self._shutdown)

    def wake(self) -> None:
        """Called from request threads after a submit or cancel: check now instead of at the next poll."""
        if self._loop is not None and self._wake is not None:
            self._loop.call_soon_threadsafe(self._wake.set)

    async def health(self) -> dict[str, Any]:
        cluster: dict[str, Any] = {"status": self.cluster.status, "warm_workers": self.warm.filled}
        if self.cluster.error:
            cluster["error"] = self.cluster.error
        if self.cluster.ready:
            try:
                cluster.update(await asyncio.to_thread(self.cluster.resources))
            except Exception as err:  # noqa: BLE001 - reported, not raised
                cluster["status"] = "unreachable"
                cluster["error"] = str(err)
        return cluster

    def logs(self, record: JobRecord) -> str:
        """Blocking: the driver's output, from Ray Jobs while Ray has it, else the copy kept at the job's end."""
        if record.submission_id and record.status == "running" and self.cluster.ready:
            try:
                return self.cluster.jobs().get_job_logs(record.submission_id)
            except Exception:  # noqa: BLE001 - fall back to the kept copy
                pass
        if record.job_dir:
            try:
                return job_paths(Path(record.job_dir))["log"].read_text(errors="replace")
            except OSError:
                pass
        return ""

    # -- the loop ------------------------------------------------------------
    async def _run_loop(self) -> None:
        assert self._wake is not None
        while True:
            try:
                await asyncio.to_thread(self.tick)
            except asyncio.CancelledError:
                raise
            except Exception:  # keep serving; the next tick retries
                log.exception("job runner tick failed")
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=self.settings.poll_interval_s)
            except asyncio.TimeoutError:
                pass
            self._wake.clear()

    def tick(self) -> None:
        with self._tick_lock:
            if self._stopping or not self.cluster.ready:
                return
            self._watch()
            if self.warm.busy():  # no job starts while the warm pool fills
                return
            self._dispatch()
            self.warm.fill_if_idle()

    def _job_info(self, sid: str):
        """Ray's JobDetails, or None when Ray does not know the submission."""
        try:
            return self.cluster.jobs().get_job_info(sid)
        except RuntimeError as err:
            if "404" in str(err) or "does not exist" in str(err):
                return None
            raise

    def _watch(self) -> None:
        """Follow every running job of this instance in Ray: cancels, ends, and jobs a restart left behind."""
        for record in self.store.running(owner=self.owner):
            sid = record.submission_id or submission_id(record.id)
            info = self._job_info(sid)
            if info is None:
                if record.submission_id is None:  # claimed, but the service stopped before submitting it
                    log.warning("job %s never reached Ray: queued again", record.id)
                    self.store.requeue(record.id)
                else:
                    self.store.finish(record.id, "failed", error=LOST)
                continue
            status = ray_status(info)
            if status in TERMINAL:
                self._finish(record, sid, status, info, reason=self._over_time.pop(sid, None))
            elif sid not in self._stop_sent:
                over = self._time_limit_exceeded(record)
                if record.cancel_requested or over:
                    log.info("stopping job %s (Ray job %s): %s", record.id, sid, over or "cancelled")
                    if over:
                        self._over_time[sid] = over
                    self.cluster.jobs().stop_job(sid)
                    self._stop_sent.add(sid)

    def _time_limit_exceeded(self, record: JobRecord) -> str | None:
        """Why a job has run too long (the service's DDRAY_MAX_JOB_SECONDS or its own resources.max_runtime_s), or None."""
        limits = {"DDRAY_MAX_JOB_SECONDS": self.settings.max_job_seconds}
        own = (record.config.get("resources") or {}).get("max_runtime_s")
        if isinstance(own, (int, float)):
            limits["resources.max_runtime_s"] = float(own)
        name, limit = min(((k, v) for k, v in limits.items() if v), key=lambda kv: kv[1], default=(None, None))
        if limit is None or record.started_at is None or time.time() - record.started_at <= limit:
            return None
        return f"stopped after the time limit of {limit:g} s ({name}); finished subdomains are kept in its run"

    def _finish(self, record: JobRecord, sid: str, status: str, info: Any, reason: str | None = None) -> None:
        text = ""
        try:
            text = self.cluster.jobs().get_job_logs(sid)
        except Exception:  # noqa: BLE001 - the job still ends; its log may be gone with its cluster
            log.warning("could not read the log of job %s from Ray", record.id)
        self._keep_log(record, text)
        exit_code = getattr(info, "driver_exit_code", None)
        if status == "SUCCEEDED":
            self.store.finish(record.id, "succeeded", exit_code=exit_code, summary=self._summary(record))
        elif status == "STOPPED" and record.cancel_requested:
            self.store.finish(record.id, "cancelled", error="cancelled by request", exit_code=exit_code)
        elif status == "STOPPED":
            self.store.finish(record.id, "failed", error=reason or STOPPED_OUTSIDE, exit_code=exit_code)
        else:
            self.store.finish(record.id, "failed", error=failure_reason(text, getattr(info, "message", None), exit_code), exit_code=exit_code)
        self._stop_sent.discard(sid)
        self.warm.needed = True
        log.info("job %s ended: Ray status %s", record.id, status)

    def _keep_log(self, record: JobRecord, text: str) -> None:
        """The log outlives the Ray session: a copy in the job folder and, with storage, beside the run's results."""
        if not record.job_dir or not text:
            return
        path = job_paths(Path(record.job_dir))["log"]
        path.write_text(text)
        if record.run_location and storage.is_uri(record.run_location):
            try:
                storage.copy_file(str(path), storage.join(record.run_location, "log.txt"))
            except OSError as err:
                log.warning("could not copy the log of job %s to %s: %s", record.id, record.run_location, err)

    def _summary(self, record: JobRecord) -> dict[str, Any] | None:
        name = "sweep.json" if driver_command(record.config) == "sweep" else "results.json"
        for location in run_locations(record):
            try:
                return results_summary(json.loads(storage.read_bytes(storage.join(location, name))))
            except (OSError, ValueError):
                continue
        return None

    def _dispatch(self) -> None:
        limit = self.settings.max_concurrent_jobs
        while self.store.count(["running"])["running"] < limit:
            record = self.store.claim_next(self.owner)
            if record is None:
                return
            try:
                self._submit(record)
            except Exception as err:  # noqa: BLE001 - the job fails, the service goes on
                log.exception("could not submit job %s to Ray", record.id)
                self.store.finish(record.id, "failed", error=f"could not submit the job to Ray: {err}")

    def _submit(self, record: JobRecord) -> None:
        job_dir = self.settings.jobs_dir / record.id
        paths = job_paths(job_dir)
        job_dir.mkdir(parents=True, exist_ok=True)
        paths["config"].write_text(yaml.safe_dump(record.config, sort_keys=False))
        base = storage.storage_base(record.config.get("storage") or self.settings.storage)
        run_location = storage.run_prefix(base, record.id) or str(paths["run"])
        sid = submission_id(record.id)
        self.warm.remember(record.config)
        self.store.set_submission(record.id, submission_id=sid, job_dir=str(job_dir), run_location=run_location)
        command = [
            *nice_prefix(self.settings.job_nice if self.cluster.local else 0),
            sys.executable, "-m", "ddray", driver_command(record.config), str(paths["config"]),
            "--output", str(paths["run"]), "--run-id", record.id, "--address", "auto",
        ]
        env = {
            "DDRAY_PLAIN_PROGRESS": "1",
            "PYTHONUNBUFFERED": "1",
            "COLUMNS": "1000",
            "RAY_JOB_STOP_WAIT_TIME_S": str(max(1, int(self.settings.cancel_grace_s))),
        }
        if self.settings.storage:
            env["DDRAY_STORAGE"] = self.settings.storage
        # the service's MLflow settings reach its jobs on any cluster (docs/tracking.md)
        env.update({k: v for k, v in os.environ.items() if k.startswith("MLFLOW_")})
        self.cluster.jobs().submit_job(
            entrypoint=shlex.join(command),
            submission_id=sid,
            runtime_env={"env_vars": env},
            metadata={"ddray_job_id": record.id, "name": (record.name or "")[:100]},
        )
        log.info("job %s submitted as Ray job %s (run at %s)", record.id, sid, run_location)

    # -- stop of the service ---------------------------------------------------
    def _shutdown(self) -> None:
        with self._tick_lock:
            self._stopping = True
            running = self.store.running(owner=self.owner)
            if not self.cluster.local:
                if running:
                    log.info("%d job(s) keep running on the Ray cluster; the next start of the service re-attaches them", len(running))
                else:
                    self.warm.drain()
                return
            if self.cluster.ready:
                self._stop_jobs(running)
            else:
                for record in running:
                    self.store.finish(record.id, "failed", error=STOPPED)
        self.cluster.stop()

    def _stop_jobs(self, running: list[JobRecord]) -> None:
        """Local head only: stop its jobs (the head goes next) and record why."""
        jobs = self.cluster.jobs()
        for record in running:
            if record.submission_id:
                try:
                    jobs.stop_job(record.submission_id)
                except Exception:  # noqa: BLE001 - it may have ended already
                    pass
        deadline = time.monotonic() + self.settings.cancel_grace_s + 10
        for record in running:
            info = None
            while record.submission_id and time.monotonic() < deadline:
                info = self._job_info(record.submission_id)
                if info is None or ray_status(info) in TERMINAL:
                    break
                time.sleep(0.2)
            if info is not None and record.submission_id:
                status = ray_status(info)
                self._finish(record, record.submission_id, status if status in TERMINAL else "STOPPED", info, reason=STOPPED)
            else:
                self.store.finish(record.id, "cancelled" if record.cancel_requested else "failed", error=STOPPED)
