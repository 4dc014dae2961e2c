"""Job records in SQL (SQLAlchemy Core): SQLite with WAL by default, any SQLAlchemy URL otherwise.

A record is the domain side of a job: its config, the Ray job that runs it
(``submission_id``), where its run lives (``run_location``: the storage prefix,
or the run folder on the head) and a summary of its results. Status, logs and
stop come from Ray Jobs. A record is written (and committed) before
``POST /jobs`` answers, so an accepted job survives a crash of the service. Status changes that several
service instances could race on (claiming a queued job, cancelling) are single
conditional ``UPDATE`` statements.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from sqlalchemy import (
    Boolean,
    Column,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    event,
    func,
    select,
    update,
)
from sqlalchemy.engine import Engine, make_url

STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")
ACTIVE = ("queued", "running")
FINAL = ("succeeded", "failed", "cancelled")

metadata = MetaData()

jobs = Table(
    "jobs",
    metadata,
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("id", String(32), unique=True, nullable=False, index=True),
    Column("name", String(200), nullable=True),
    Column("status", String(16), nullable=False, index=True),
    Column("config", Text, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("started_at", Float, nullable=True),
    Column("finished_at", Float, nullable=True),
    Column("error", Text, nullable=True),
    Column("job_dir", Text, nullable=True),
    Column("exit_code", Integer, nullable=True),
    Column("owner", String(300), nullable=True),
    Column("cancel_requested", Boolean, nullable=False, default=False),
    Column("submission_id", String(100), nullable=True),
    Column("run_location", Text, nullable=True),
    Column("summary", Text, nullable=True),
)


@dataclass(frozen=True)
class JobRecord:
    seq: int
    id: str
    name: str | None
    status: str
    config: dict[str, Any]
    created_at: float
    started_at: float | None
    finished_at: float | None
    error: str | None
    job_dir: str | None
    exit_code: int | None
    owner: str | None
    cancel_requested: bool
    submission_id: str | None
    run_location: str | None
    summary: dict[str, Any] | None

    @classmethod
    def from_row(cls, row: Any) -> "JobRecord":
        m = dict(row._mapping)
        m["config"] = json.loads(m["config"])
        m["summary"] = json.loads(m["summary"]) if m.get("summary") else None
        m["cancel_requested"] = bool(m["cancel_requested"])
        return cls(**m)


def _add_missing_columns(engine: Engine) -> None:
    """Databases made by an older ddray lack the newer nullable columns: add them (no other migration exists)."""
    from sqlalchemy import inspect, text

    have = {c["name"] for c in inspect(engine).get_columns("jobs")}
    with engine.begin() as conn:
        for column in jobs.columns:
            if column.name not in have:
                conn.execute(text(f"ALTER TABLE jobs ADD COLUMN {column.name} {column.type.compile(engine.dialect)}"))


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        database = make_url(url).database
        if database and database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):  # noqa: ANN001
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=FULL")  # a 201 means the record is on disk
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        return engine
    return create_engine(url, pool_pre_ping=True)


class JobStore:
    """All reads and writes of job records. Methods are blocking: call them off the event loop."""

    def __init__(self, url: str):
        self.url = url
        self.engine = make_engine(url)
        metadata.create_all(self.engine)
        _add_missing_columns(self.engine)
        self._generations: dict[str, int] = {}
        self._gen_lock = threading.Lock()

    def generation(self, job_id: str) -> int:
        """Bumped by every write of this process to the job: a cheap 'did it change here?' for caches."""
        return self._generations.get(job_id, 0)

    def _bump(self, job_id: str) -> None:
        with self._gen_lock:
            self._generations[job_id] = self._generations.get(job_id, 0) + 1

    def close(self) -> None:
        self.engine.dispose()

    # -- create / read ---------------------------------------------------
    def create(self, config: dict[str, Any], name: str | None = None, job_id: str | None = None) -> JobRecord:
        job_id = job_id or uuid.uuid4().hex[:12]
        with self.engine.begin() as conn:
            conn.execute(
                jobs.insert().values(
                    id=job_id,
                    name=name,
                    status="queued",
                    config=json.dumps(config),
                    created_at=time.time(),
                    cancel_requested=False,
                )
            )
        self._bump(job_id)
        found = self.get(job_id)
        assert found is not None
        return found

    def get(self, job_id: str) -> JobRecord | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(jobs).where(jobs.c.id == job_id)).first()
        return JobRecord.from_row(row) if row is not None else None

    def list(self, *, status: str | None = None, limit: int = 20, offset: int = 0) -> tuple[list[JobRecord], int]:
        """Newest first."""
        query = select(jobs)
        count = select(func.count()).select_from(jobs)
        if status:
            query = query.where(jobs.c.status == status)
            count = count.where(jobs.c.status == status)
        query = query.order_by(jobs.c.seq.desc()).limit(limit).offset(offset)
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
            total = conn.execute(count).scalar_one()
        return [JobRecord.from_row(r) for r in rows], int(total)

    def count(self, statuses: Iterable[str]) -> dict[str, int]:
        statuses = list(statuses)
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(jobs.c.status, func.count()).where(jobs.c.status.in_(statuses)).group_by(jobs.c.status)
            ).all()
        found = {s: 0 for s in statuses}
        found.update({s: int(n) for s, n in rows})
        return found

    def running(self, owner: str | None = None) -> list[JobRecord]:
        query = select(jobs).where(jobs.c.status == "running")
        if owner is not None:
            query = query.where(jobs.c.owner == owner)
        with self.engine.connect() as conn:
            return [JobRecord.from_row(r) for r in conn.execute(query.order_by(jobs.c.seq)).all()]

    # -- transitions -------------------------------------------------------
    def claim_next(self, owner: str) -> JobRecord | None:
        """Atomically move the oldest queued job to running (for ``owner``); None when none is queued."""
        for _ in range(5):  # another instance may win the race for the same row: try the next one
            with self.engine.begin() as conn:
                row = conn.execute(
                    select(jobs.c.id).where(jobs.c.status == "queued").order_by(jobs.c.seq).limit(1)
                ).first()
                if row is None:
                    return None
                done = conn.execute(
                    update(jobs)
                    .where(jobs.c.id == row.id, jobs.c.status == "queued")
                    .values(status="running", owner=owner, started_at=time.time())
                )
            self._bump(row.id)
            if done.rowcount == 1:
                return self.get(row.id)
        return None

    def set_submission(self, job_id: str, *, submission_id: str, job_dir: str, run_location: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                update(jobs).where(jobs.c.id == job_id).values(submission_id=submission_id, job_dir=job_dir, run_location=run_location)
            )
        self._bump(job_id)

    def requeue(self, job_id: str) -> None:
        """A claimed job that never reached Ray (the service stopped in between) goes back to the queue."""
        with self.engine.begin() as conn:
            conn.execute(
                update(jobs).where(jobs.c.id == job_id, jobs.c.status == "running").values(status="queued", owner=None, started_at=None)
            )
        self._bump(job_id)

    def finish(
        self, job_id: str, status: str, *, error: str | None = None, exit_code: int | None = None, summary: dict[str, Any] | None = None
    ) -> bool:
        """Move a running or queued job to a final status; False when it already was final."""
        assert status in FINAL
        values: dict[str, Any] = dict(status=status, error=error, exit_code=exit_code, finished_at=time.time())
        if summary is not None:
            values["summary"] = json.dumps(summary)
        with self.engine.begin() as conn:
            done = conn.execute(update(jobs).where(jobs.c.id == job_id, jobs.c.status.in_(ACTIVE)).values(**values))
        self._bump(job_id)
        return done.rowcount == 1

    def request_cancel(self, job_id: str) -> str | None:
        """Cancel a queued job at once, or flag a running one for its runner; the job's status after, or None."""
        with self.engine.begin() as conn:
            conn.execute(
                update(jobs)
                .where(jobs.c.id == job_id, jobs.c.status == "queued")
                .values(status="cancelled", cancel_requested=True, finished_at=time.time(), error="cancelled before it started")
            )
            conn.execute(
                update(jobs).where(jobs.c.id == job_id, jobs.c.status == "running").values(cancel_requested=True)
            )
            row = conn.execute(select(jobs.c.status).where(jobs.c.id == job_id)).first()
        self._bump(job_id)
        return row.status if row is not None else None
