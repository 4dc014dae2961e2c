"""Request and response bodies (one family per resource: JobCreate in, JobPublic out)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ddray.config import RunConfig

JobStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]


class JobCreate(BaseModel):
    """A job to run: the same config schema as ``ddray run CONFIG.yaml``."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(None, max_length=200, description="free label shown in lists")
    config: RunConfig


class JobCreated(BaseModel):
    id: str
    status: JobStatus


class SubdomainProgress(BaseModel):
    index: int
    status: str | None = Field(None, description="pending, started, running, done, restored or failed")
    epoch: int | None = None
    epochs: int | None = None
    train_loss: float | None = None
    val_loss: float | None = None
    val_accuracy: float | None = Field(None, description="latest validation accuracy")
    best_val_accuracy: float | None = None
    trial: int | str | None = Field(None, description="current trial (searches)")
    trials_done: int | None = Field(None, description="finished trials (searches)")


class GlobalAccuracy(BaseModel):
    """The latest streamed global answer (``aggregation.streaming``): the DNN refitted on the subdomains done so far."""

    subdomains_done: int
    seconds: float | None = Field(None, description="seconds into the local phase when this refit was ready")
    test_accuracy: float | None = None
    validation_accuracy: float | None = None


class Timings(BaseModel):
    queued_s: float | None = Field(None, description="from submission to start")
    run_s: float | None = Field(None, description="from start to end (or until now)")
    phases: dict[str, float] = Field(default_factory=dict, description="start of each phase, seconds after the run started")
    results: dict[str, float] = Field(default_factory=dict, description="timings_s of results.json")


class JobSummary(BaseModel):
    id: str
    name: str | None
    status: JobStatus
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    error: str | None = None
    ray_job: str | None = Field(None, description="the Ray job's submission id (ray job list, the dashboard)")
    run_location: str | None = Field(None, description="where the run's files live: <storage>/<job id>, or the run folder on the head")
    results: dict[str, Any] | None = Field(None, description="test accuracies and timings of a succeeded job")


class JobPublic(JobSummary):
    phase: str | None = Field(
        None, description="starting, loading, local_training, search, aggregation, baselines, done, failed or cancelled"
    )
    cancel_requested: bool = False
    subdomains: list[SubdomainProgress] = Field(default_factory=list)
    global_accuracy: GlobalAccuracy | None = Field(None, description="with aggregation.streaming: the current global accuracy")
    timings: Timings = Field(default_factory=Timings)
    progress_updated_at: datetime | None = None
    config: dict[str, Any]


class JobList(BaseModel):
    items: list[JobSummary]
    total: int
    limit: int
    offset: int


class ArtifactList(BaseModel):
    job_id: str
    location: str = Field(description="where the files are read from: the job's storage prefix, or its run folder on the head")
    files: list[str] = Field(description="paths relative to the run, for GET /jobs/{id}/artifacts/{path}")


class PredictionRecord(BaseModel):
    model_config = ConfigDict(extra="allow")

    input: str
    dnn: str | None = None
    average: str | None = None
    vote: str | None = None
    dnn_confidence: float | None = None


class PredictionResponse(BaseModel):
    job_id: str
    count: int
    records: list[PredictionRecord]
    warnings: list[str] = Field(
        default_factory=list,
        description="inputs far from the training distribution, each naming the upload and the likely cause "
        "(e.g. 'inputs look 0-255 but the model was trained on 0-1'); the records are still given",
    )


class ClusterHealth(BaseModel):
    model_config = ConfigDict(extra="allow")

    status: str = Field(description="running or external (ok), starting, stopped, error, unreachable")
    total: dict[str, float] = Field(default_factory=dict)
    available: dict[str, float] = Field(default_factory=dict)
    nodes: int | None = None
    warm_workers: int = Field(0, description="subdomain workers the service keeps started for the next job (they hold CPUs while idle)")
    error: str | None = None


class Health(BaseModel):
    status: Literal["ok", "starting", "degraded"]
    database: str | None = Field(None, description="with the token only")
    ray: ClusterHealth | None = Field(None, description="with the token only")
    jobs: dict[str, int] | None = Field(None, description="with the token only")


class ErrorMessage(BaseModel):
    detail: Any
