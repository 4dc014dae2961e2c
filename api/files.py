"""Reading a job's run: progress snapshot, results, log tail, artifacts (small cached reads).

A run is read where it is nearest: its folder on the head (where the driver
writes), else its storage prefix (``<storage>/<job id>``, where the whole
folder lands when the job ends), so results outlive the head's disk.
"""

from __future__ import annotations

import json
import math
import mimetypes
import os
import re
import threading
import time
from collections import OrderedDict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from api.runner import job_paths, run_locations
from api.schemas import GlobalAccuracy, JobPublic, JobSummary, SubdomainProgress, Timings
from api.store import JobRecord
from ddray import storage

MEDIA_TYPES = {
    ".png": "image/png",
    ".md": "text/markdown; charset=utf-8",
    ".csv": "text/csv; charset=utf-8",
    ".json": "application/json",
    ".yaml": "application/yaml",
    ".txt": "text/plain; charset=utf-8",
}
MAX_LOG_BYTES = 1024 * 1024
_ARTIFACT = re.compile(r"^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*$")


class ArtifactNotFound(LookupError):
    """No such file in the job's run (or a name that cannot be one); the message says which."""


def media_type(name: str) -> str:
    suffix = os.path.splitext(name)[1].lower()
    return MEDIA_TYPES.get(suffix) or mimetypes.guess_type(name)[0] or "application/octet-stream"


def check_artifact_name(name: str) -> str:
    """A relative path inside a run: plain segments only (no '..', no absolute paths, no odd characters)."""
    if len(name) > 300 or not _ARTIFACT.match(name) or any(part in (".", "..") for part in name.split("/")):
        raise ArtifactNotFound(f"{name!r} is not a file name of a run; list them with GET /jobs/{{id}}/artifacts")
    return name


def list_artifacts(record: JobRecord) -> tuple[str, list[str]]:
    """(location, relative paths of its files): the storage prefix once the run is there, else the run folder."""
    places = run_locations(record)
    for location in reversed(places):  # storage first: after the job ends it holds the whole run
        try:
            names = storage.list_files(location)
        except (OSError, ValueError):
            continue
        if names:
            return location, names
    return (places[0] if places else ""), []


def read_artifact(record: JobRecord, name: str) -> tuple[Path | None, bytes | None]:
    """(local file, None) when the run folder on this machine has it, else (None, bytes from storage)."""
    check_artifact_name(name)
    places = run_locations(record)
    for location in places:
        if not storage.is_uri(location):
            root = Path(location).resolve()
            path = (root / name).resolve()
            if path.is_file() and path.is_relative_to(root):
                return path, None
    for location in places:
        if storage.is_uri(location):
            target = storage.join(location, name)
            try:
                if storage.exists(target):
                    return None, storage.read_bytes(target)
            except (OSError, ValueError):
                continue
    raise ArtifactNotFound(f"job {record.id} has no {name} (yet)")


def local_run(record: JobRecord, cache_dir: Path) -> Path | None:
    """A run folder on this machine to load models from: the head's, else a copy fetched once from storage."""
    places = run_locations(record)
    for location in places:
        if not storage.is_uri(location) and (Path(location) / "results.json").is_file():
            return Path(location)
    copy = cache_dir / record.id
    if (copy / "results.json").is_file():
        return copy
    for location in places:
        if storage.is_uri(location):
            try:
                storage.download_tree(location, copy)
            except (OSError, ValueError):
                continue
            if (copy / "results.json").is_file():
                return copy
    return None


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
        ray_job=record.submission_id,
        run_location=record.run_location,
        results=record.summary,
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
    global_accuracy = None
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
        streamed = progress.get("global")
        if isinstance(streamed, dict):
            try:
                global_accuracy = GlobalAccuracy(**{k: _finite(v) for k, v in streamed.items() if k in GlobalAccuracy.model_fields})
            except (ValueError, ValidationError):
                global_accuracy = None
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
        global_accuracy=global_accuracy,
        timings=timings,
        progress_updated_at=_dt(updated) if isinstance(updated, (int, float)) else None,
        config=record.config,
    )


def tail(text: str, lines: int | None) -> str:
    """The last ``lines`` lines (all when None) of at most the last MiB of a log."""
    if len(text) > MAX_LOG_BYTES:
        text = text[-MAX_LOG_BYTES:].split("\n", 1)[-1]  # drop the cut first line
    if lines is None:
        return text
    return "".join(text.splitlines(keepends=True)[-lines:])


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
