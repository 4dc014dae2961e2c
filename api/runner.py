"""The job runner: starts queued jobs as Ray drivers, watches them, cancels them.

Each job is its own process, ``python -m ddray run CONFIG --output RUN --address ADDR``,
in its own process session, with its output in ``<job dir>/log.txt``. The web
process only spawns, polls and signals these processes; it never trains.

* Queue: jobs start in submission order while fewer than
  ``max_concurrent_jobs`` run (counted in the database, so several service
  instances sharing one database share the limit, approximately).
* Cancel: SIGTERM to the driver, SIGKILL to its process group after
  ``cancel_grace_s``. When a driver dies Ray kills its actors and frees
  their resources.
* Stop of the service: running jobs are stopped and marked failed ("the
  service stopped while the job was running").
* Start of the service: jobs this instance (same host and state dir) had left
  ``running`` are marked failed ("the service restarted while the job was
  running"); a driver of theirs still alive is stopped first. Jobs are not
  re-attached: with the default local Ray head, their cluster is gone anyway.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Protocol

import yaml

from api.cluster import RayCluster, nice_prefix, stop_process_group
from api.settings import ServiceSettings
from api.store import JobRecord, JobStore

log = logging.getLogger("ddray.api")

RESTARTED = "the service restarted while the job was running; its driver was stopped. Resubmit the job"
STOPPED = "the service stopped while the job was running; resubmit the job"
EXIT_BAD_INPUT = 2


class Runner(Protocol):
    """What the routes need from a runner (the fake of the route tests implements the same)."""

    async def start(self) -> None: ...
    async def stop(self) -> None: ...
    def wake(self) -> None: ...
    async def health(self) -> dict[str, Any]: ...


def job_paths(job_dir: Path) -> dict[str, Path]:
    return {"config": job_dir / "config.yaml", "log": job_dir / "log.txt", "run": job_dir / "run"}


def failure_reason(job_dir: Path, exit_code: int | None) -> str:
    """The most useful sentence about why a driver failed: its 'error:' line, the run's error, or the log's end."""
    paths = job_paths(job_dir)
    text = ""
    try:
        with open(paths["log"], "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 64 * 1024))
            text = fh.read().decode(errors="replace")
    except OSError:
        pass
    lines = [line.rstrip() for line in text.splitlines() if line.strip()]
    for i in range(len(lines) - 1, -1, -1):
        if lines[i].startswith("error:"):
            return " ".join(part.strip() for part in lines[i:])[len("error:"):].strip()[:4000]
    try:
        progress = json.loads((paths["run"] / "progress.json").read_text())
        if progress.get("error"):
            return f"{progress['error']} (exit code {exit_code})"[:4000]
    except (OSError, ValueError):
        pass
    tail = lines[-1] if lines else "no output"
    return f"the driver exited with code {exit_code}: {tail}"[:4000]


@dataclass
class _Proc:
    job_id: str
    popen: subprocess.Popen
    job_dir: Path
    log: IO[bytes]
    term_sent: float | None = None
    killed: bool = False


class JobRunner:
    def __init__(self, settings: ServiceSettings, store: JobStore, cluster: RayCluster | None = None):
        self.settings = settings
        self.store = store
        self.cluster = cluster or RayCluster(settings)
        self.owner = f"{socket.gethostname()}:{settings.state_dir}"
        self.procs: dict[str, _Proc] = {}
        self._task: asyncio.Task | None = None
        self._cluster_task: asyncio.Future | None = None
        self._wake: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tick_lock = threading.Lock()  # ticks (worker thread) and the final stop never overlap
        self._stopping = False

    # -- lifecycle ---------------------------------------------------------
    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self.settings.jobs_dir.mkdir(parents=True, exist_ok=True)
        await asyncio.to_thread(self.recover)
        if self.settings.max_concurrent_jobs > 0 or not self.cluster.local:
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
        await asyncio.to_thread(self._stop_all)
        await asyncio.to_thread(self.cluster.stop)

    def wake(self) -> None:
        """Called from request threads after a submit or cancel: check now instead of at the next poll."""
        if self._loop is not None and self._wake is not None:
            self._loop.call_soon_threadsafe(self._wake.set)

    async def health(self) -> dict[str, Any]:
        cluster: dict[str, Any] = {"status": self.cluster.status}
        if self.cluster.error:
            cluster["error"] = self.cluster.error
        if self.cluster.ready:
            try:
                cluster.update(await asyncio.to_thread(self.cluster.resources))
            except Exception as err:  # noqa: BLE001 - reported, not raised
                cluster["status"] = "unreachable"
                cluster["error"] = str(err)
        return cluster

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
            if self._stopping:
                return
            self._reap()
            self._cancel_requested()
            self._dispatch()

    def _reap(self) -> None:
        for job_id, proc in list(self.procs.items()):
            code = proc.popen.poll()
            if code is None:
                if proc.term_sent and not proc.killed and time.monotonic() - proc.term_sent > self.settings.cancel_grace_s:
                    self._signal_group(proc, signal.SIGKILL)
                    proc.killed = True
                continue
            self._signal_group(proc, signal.SIGKILL)  # anything the driver left in its session
            proc.log.close()
            del self.procs[job_id]
            record = self.store.get(job_id)
            if code == 0:
                self.store.finish(job_id, "succeeded", exit_code=code)
            elif record is not None and record.cancel_requested:
                self.store.finish(job_id, "cancelled", error="cancelled by request", exit_code=code)
            else:
                self.store.finish(job_id, "failed", error=failure_reason(proc.job_dir, code), exit_code=code)
            log.info("job %s ended with exit code %s", job_id, code)

    def _cancel_requested(self) -> None:
        for record in self.store.running(owner=self.owner):
            proc = self.procs.get(record.id)
            if record.cancel_requested and proc is not None and proc.term_sent is None:
                log.info("cancelling job %s (pid %s)", record.id, proc.popen.pid)
                try:
                    proc.popen.send_signal(signal.SIGTERM)
                except ProcessLookupError:
                    pass
                proc.term_sent = time.monotonic()

    def _dispatch(self) -> None:
        if not self.cluster.ready:
            return
        limit = self.settings.max_concurrent_jobs
        while self.store.count(["running"])["running"] < limit:
            record = self.store.claim_next(self.owner)
            if record is None:
                return
            try:
                self._spawn(record)
            except Exception as err:  # noqa: BLE001 - the job fails, the service goes on
                log.exception("could not start job %s", record.id)
                self.store.finish(record.id, "failed", error=f"could not start the job's driver: {err}")

    def _spawn(self, record: JobRecord) -> None:
        job_dir = self.settings.jobs_dir / record.id
        paths = job_paths(job_dir)
        job_dir.mkdir(parents=True, exist_ok=True)
        paths["config"].write_text(yaml.safe_dump(record.config, sort_keys=False))
        env = {k: v for k, v in os.environ.items() if not k.startswith("DDRAY_") and k != "RAY_ADDRESS"}
        env.update(self.cluster.driver_env())
        env.update({"DDRAY_PLAIN_PROGRESS": "1", "PYTHONUNBUFFERED": "1", "COLUMNS": "1000"})
        cmd = [sys.executable, "-m", "ddray", "run", str(paths["config"]), "--output", str(paths["run"])]
        if self.cluster.address:
            cmd += ["--address", self.cluster.address]
        cmd = nice_prefix(self.settings.job_nice) + cmd
        log_fh = open(paths["log"], "ab")
        try:
            popen = subprocess.Popen(
                cmd, cwd=job_dir, env=env, stdin=subprocess.DEVNULL, stdout=log_fh, stderr=subprocess.STDOUT, start_new_session=True
            )
        except Exception:
            log_fh.close()
            raise
        self.procs[record.id] = _Proc(record.id, popen, job_dir, log_fh)
        self.store.set_process(record.id, pid=popen.pid, job_dir=str(job_dir))
        log.info("job %s started (pid %s)", record.id, popen.pid)

    @staticmethod
    def _signal_group(proc: _Proc, sig: int) -> None:
        try:
            os.killpg(proc.popen.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    # -- start and stop of the service ---------------------------------------
    def recover(self) -> None:
        """Jobs this instance left running (crash or kill of the service) are stopped and marked failed."""
        for record in self.store.running(owner=self.owner):
            if record.pid and record.job_dir:
                if stop_process_group(record.pid, str(job_paths(Path(record.job_dir))["run"]), grace_s=self.settings.cancel_grace_s):
                    log.warning("stopped the orphaned driver of job %s (pid %s)", record.id, record.pid)
            if record.cancel_requested:
                self.store.finish(record.id, "cancelled", error="cancelled by request")
            else:
                self.store.finish(record.id, "failed", error=RESTARTED)
            log.warning("job %s was running when the service stopped: marked %s", record.id, "failed")

    def _stop_all(self) -> None:
        with self._tick_lock:
            self._stopping = True
            self._stop_procs()

    def _stop_procs(self) -> None:
        for proc in self.procs.values():
            try:
                proc.popen.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + self.settings.cancel_grace_s
        for job_id, proc in list(self.procs.items()):
            try:
                proc.popen.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            self._signal_group(proc, signal.SIGKILL)
            try:
                proc.popen.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
            proc.log.close()
            record = self.store.get(job_id)
            if record is not None and record.cancel_requested:
                self.store.finish(job_id, "cancelled", error="cancelled by request")
            else:
                self.store.finish(job_id, "failed", error=STOPPED, exit_code=proc.popen.returncode)
        self.procs.clear()
