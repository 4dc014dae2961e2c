"""Reading a job's folder: progress snapshot, results, log tail, artifacts (small cached reads)."""

from __future__ import annotations

import json
import math
import os
import threading
import time
from collections import OrderedDict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from api.runner import job_paths
from api.schemas import JobPublic, JobSummary, SubdomainProgress, Timings
from api.store import JobRecord

ARTIFACTS = {
    "accuracy.png": "image/png",
    "results.md": "text/markdown; charset=utf-8",
    "results.csv": "text/csv; charset=utf-8",
    "results.json": "application/json",
    "config.yaml": "application/yaml",
    "progress.json": "application/json",
}
MAX_LOG_BYTES = 1024 * 1024


class JsonFileCache:
    """Parsed JSON files keyed by (path, mtime, size): repeated GETs of a job do not re-parse."""

    def __init__(self, size: int = 256):
        self.size = size
        self._items: OrderedDict[str, tuple[tuple[int, int], Any]] = OrderedDict()
        self._lock = threading.Lock()

    def read(self, path: Path) -> Any | None:
        try:
            st = os.stat(path)
        except OSError:
            return None
        key, stamp = str(path), (st.st_mtime_ns, st.st_size)
        with self._lock:
            hit = self._items.get(key)
            if hit and hit[0] == stamp:
                self._items.move_to_end(key)
                return hit[1]
        try:
            value = json.loads(Path(path).read_text())
        except (OSError, ValueError):
            return None
        with self._lock:
            self._items[key] = (stamp, value)
            while len(self._items) > self.size:
                self._items.popitem(last=False)
        return value


def _dt(ts: float | None) -> datetime | None:
    return datetime.fromtimestamp(ts, tz=timezone.utc) if ts is not None else None


def _finite(value: Any) -> Any:
    return None if isinstance(value, float) and not math.isfinite(value) else value


def summary(record: JobRecord) -> JobSummary:
    return JobSummary(
        id=record.id,
        name=record.name,
        status=record.status,  # type: ignore[arg-type]
        created_at=_dt(record.created_at),
        started_at=_dt(record.started_at),
        finished_at=_dt(record.finished_at),
        error=record.error,
    )


def run_dir(record: JobRecord) -> Path | None:
    return job_paths(Path(record.job_dir))["run"] if record.job_dir else None


def public(record: JobRecord, cache: JsonFileCache) -> JobPublic:
    base = summary(record).model_dump()
    progress = None
    results = None
    rd = run_dir(record)
    if rd is not None:
        progress = cache.read(rd / "progress.json")
        if record.status == "succeeded":
            results = cache.read(rd / "results.json")
    subdomains: list[SubdomainProgress] = []
    phases: dict[str, float] = {}
    phase = None
    updated = None
    if isinstance(progress, dict):
        phase = progress.get("phase")
        updated = progress.get("updated")
        for key, entry in sorted((progress.get("subdomains") or {}).items(), key=lambda kv: int(kv[0]) if str(kv[0]).isdigit() else 0):
            if not isinstance(entry, dict):
                continue
            fields = {k: _finite(v) for k, v in entry.items() if k in SubdomainProgress.model_fields}
            try:
                subdomains.append(SubdomainProgress(index=int(key), **fields))
            except (ValueError, ValidationError):
                continue
        started = progress.get("started")
        for name, info in (progress.get("phases") or {}).items():
            if isinstance(info, dict) and isinstance(info.get("started"), (int, float)) and isinstance(started, (int, float)):
                phases[name] = round(info["started"] - started, 3)
    elif record.status == "running":
        phase = "starting"
    if record.status == "cancelled":
        phase = "cancelled"
    now = time.time()
    timings = Timings(
        queued_s=round((record.started_at or record.finished_at or now) - record.created_at, 3),
        run_s=round((record.finished_at or now) - record.started_at, 3) if record.started_at else None,
        phases=phases,
        results={k: v for k, v in ((results or {}).get("timings_s") or {}).items() if isinstance(v, (int, float))},
    )
    return JobPublic(
        **base,
        phase=phase,
        cancel_requested=record.cancel_requested,
        subdomains=subdomains,
        timings=timings,
        progress_updated_at=_dt(updated) if isinstance(updated, (int, float)) else None,
        config=record.config,
    )


def log_tail(path: Path, lines: int | None) -> str:
    """The last ``lines`` lines (all when None) of at most the last MiB of the log."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - MAX_LOG_BYTES))
            data = fh.read().decode(errors="replace")
    except OSError:
        return ""
    if size > MAX_LOG_BYTES:
        data = data.split("\n", 1)[-1]  # drop the cut first line
    if lines is None:
        return data
    kept = data.splitlines(keepends=True)[-lines:]
    return "".join(kept)


def _stamp(path: Path | None) -> tuple[int, int] | None:
    if path is None:
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size)


class JobViewCache:
    """Rendered ``GET /jobs/{id}`` bodies, so polling clients cost a dict lookup and a ``stat``.

    An entry is used while (a) this process made no write to the job since,
    (b) the job's progress.json is unchanged and (c) it is younger than
    ``ttl_s`` (which bounds staleness for writes by other service instances
    and for the running clock in ``timings.run_s``).
    """

    def __init__(self, ttl_s: float = 1.0, size: int = 1024):
        self.ttl_s = ttl_s
        self.size = size
        self._items: OrderedDict[str, tuple[int, Path | None, tuple[int, int] | None, float, bytes]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, job_id: str, store: Any) -> bytes | None:
        entry = self._items.get(job_id)
        if entry is None:
            return None
        generation, progress, stamp, made, body = entry
        if generation != store.generation(job_id) or time.monotonic() - made > self.ttl_s or _stamp(progress) != stamp:
            return None
        return body

    def render(self, job_id: str, store: Any, json_cache: JsonFileCache) -> bytes | None:
        """Blocking (database read): the job's JSON body, cached; None when there is no such job."""
        generation = store.generation(job_id)  # read first: a write while rendering invalidates the entry
        record = store.get(job_id)
        if record is None:
            return None
        rd = run_dir(record)
        progress = rd / "progress.json" if rd is not None else None
        stamp = _stamp(progress)
        body = public(record, json_cache).model_dump_json().encode()
        with self._lock:
            self._items[job_id] = (generation, progress, stamp, time.monotonic(), body)
            self._items.move_to_end(job_id)
            while len(self._items) > self.size:
                self._items.popitem(last=False)
        return body
