"""/jobs: submit, list, inspect, cancel, results, artifacts, logs, predict."""

from __future__ import annotations

import asyncio
import json
import math
import shutil
import tempfile
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, File, HTTPException, Path as PathParam, Query, Request, Response, UploadFile, status
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse

from api import files
from api.deps import RunnerDep, SettingsDep, StoreDep, require_token
from api.predict import UploadError, check_decoded_size, predict_files, safe_name
from api.schemas import ArtifactList, ErrorMessage, JobCreate, JobCreated, JobList, JobPublic, JobStatus, PredictionResponse
from api.security import PathNotAllowed, confine_config_paths
from api.store import JobRecord, JobStore
from ddray.config import RunConfig
from ddray.data.size import check_dataset_size
from ddray.data.validation import DataError
from ddray.limits import Limits

router = APIRouter(
    prefix="/jobs",
    tags=["jobs"],
    dependencies=[Depends(require_token)],
    responses={401: {"model": ErrorMessage, "description": "missing or wrong bearer token"}},
)

JobId = Annotated[str, PathParam(min_length=1, max_length=64, description="the job's id, as returned by POST /jobs")]
NOT_FOUND = {404: {"model": ErrorMessage, "description": "no job with this id"}}
CONFLICT = {409: {"model": ErrorMessage, "description": "the job is not in a state that allows this"}}


def _job(store: JobStore, job_id: str) -> JobRecord:
    record = store.get(job_id)
    if record is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"no job {job_id!r}")
    return record


def _succeeded(record: JobRecord, what: str) -> None:
    if record.status != "succeeded":
        raise HTTPException(
            status.HTTP_409_CONFLICT,
            detail=f"job {record.id} is {record.status}: {what} exist only once it succeeded",
        )


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=JobCreated,
    responses={
        422: {"description": "invalid config (the detail names the field), or a data path or storage location outside the allowed prefixes"},
        429: {"model": ErrorMessage, "description": "the queue is full (DDRAY_MAX_QUEUED_JOBS); see Retry-After"},
    },
)
def create_job(body: JobCreate, settings: SettingsDep, store: StoreDep, runner: RunnerDep, response: Response) -> JobCreated:
    """Queue a job. It is recorded in the database before this returns; it runs when a slot is free.

    ``dataset.path`` must lie under a data root (DDRAY_DATA_ROOTS: folders or URI
    prefixes); ``storage`` under DDRAY_STORAGE or DDRAY_STORAGE_ROOTS. The job's
    run is written under ``<storage>/<job id>``, never shared with another job.
    """
    if store.count(["queued"])["queued"] >= settings.max_queued_jobs:
        raise HTTPException(
            status.HTTP_429_TOO_MANY_REQUESTS,
            detail=f"{settings.max_queued_jobs} jobs are already queued (DDRAY_MAX_QUEUED_JOBS); submit again once some have started",
            headers={"Retry-After": "30"},
        )
    config = body.config.model_dump(mode="json")
    try:
        config = confine_config_paths(config, settings.data_roots, settings.allowed_storage, settings.max_path_entries)
    except PathNotAllowed as err:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            detail=[{"loc": ["body", "config", *err.field.split(".")], "msg": err.message, "type": err.kind}],
        ) from None
    try:
        check_dataset_size(RunConfig.model_validate(config).dataset, Limits().dataset_bytes)
    except DataError as err:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            detail=[{"loc": ["body", "config", "dataset"], "msg": str(err), "type": "dataset_invalid"}],
        ) from None
    record = store.create(config, name=body.name)
    runner.wake()
    response.headers["Location"] = f"/jobs/{record.id}"
    return JobCreated(id=record.id, status=record.status)  # type: ignore[arg-type]


@router.get("", response_model=JobList)
def list_jobs(
    store: StoreDep,
    status_: Annotated[JobStatus | None, Query(alias="status", description="only jobs in this status")] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    offset: Annotated[int, Query(ge=0, le=1_000_000_000)] = 0,
) -> JobList:
    """Jobs, newest first."""
    records, total = store.list(status=status_, limit=limit, offset=offset)
    return JobList(items=[files.summary(r) for r in records], total=total, limit=limit, offset=offset)


@router.get("/{job_id}", response_model=JobPublic, responses=NOT_FOUND)
async def get_job(job_id: JobId, store: StoreDep, request: Request) -> Response:
    """Status, phase, per-subdomain progress, timings and, on failure, the error.

    Made for polling: the body is cached per job and rebuilt when the job's
    record or progress snapshot changes (at most about a second old).
    """
    views: files.JobViewCache = request.app.state.job_views
    body = views.get(job_id, store)
    if body is None:
        body = await run_in_threadpool(views.render, job_id, store, request.app.state.json_cache)
    if body is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"no job {job_id!r}")
    return Response(body, media_type="application/json")


@router.post("/{job_id}/cancel", status_code=status.HTTP_202_ACCEPTED, response_model=JobCreated, responses={**NOT_FOUND, **CONFLICT})
def cancel_job(job_id: JobId, store: StoreDep, runner: RunnerDep) -> JobCreated:
    """Cancel a queued job at once, or stop a running one (its Ray work ends and frees its resources)."""
    record = _job(store, job_id)
    if record.status in ("succeeded", "failed", "cancelled"):
        raise HTTPException(status.HTTP_409_CONFLICT, detail=f"job {job_id} already {record.status}")
    after = store.request_cancel(job_id)
    runner.wake()
    return JobCreated(id=job_id, status=after or record.status)  # type: ignore[arg-type]


@router.get(
    "/{job_id}/results",
    responses={200: {"content": {"application/json": {}}, "description": "the run's results.json; a sweep's sweep.json"}, **NOT_FOUND, **CONFLICT},
)
def get_results(job_id: JobId, store: StoreDep, request: Request) -> JSONResponse:
    """The run's ``results.json`` (from the run folder on the head, else from the job's storage prefix).

    A sweep job (a config with ``sweep:``) answers with its ``sweep.json``: the table (``table``: one row
    per setting, mean and std of test accuracy per method over the seeds) and each run's setting and folder.
    """
    record = _job(store, job_id)
    _succeeded(record, "results")
    name = "sweep.json" if record.config.get("sweep") else "results.json"
    rd = files.run_dir(record)
    results = request.app.state.json_cache.read(rd / name) if rd else None
    if results is None:
        try:
            _, data = files.read_artifact(record, name)
            results = json.loads(data) if data is not None else None
        except (files.ArtifactNotFound, ValueError):
            results = None
    if results is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"job {job_id} has no {name}")
    return JSONResponse(_finite(results))


@router.get("/{job_id}/artifacts", response_model=ArtifactList, responses=NOT_FOUND)
def list_artifacts(job_id: JobId, store: StoreDep) -> ArtifactList:
    """Every file of the job's run (results, tables, plots, local CNN and DNN weights, baselines, log).

    Once the job has ended they are listed from its storage prefix when it has one,
    so the list is what survives the cluster; ``ddray download`` fetches them all.
    """
    record = _job(store, job_id)
    location, names = files.list_artifacts(record)
    return ArtifactList(job_id=job_id, location=location, files=names)


@router.get(
    "/{job_id}/artifacts/{name:path}",
    responses={200: {"content": {t: {} for t in sorted(set(files.MEDIA_TYPES.values()))}, "description": "the file"}, **NOT_FOUND},
)
def get_artifact(
    job_id: JobId,
    name: Annotated[str, PathParam(max_length=300, description="a path listed by GET /jobs/{id}/artifacts, e.g. accuracy.png or checkpoints/dnn.pt")],
    store: StoreDep,
) -> Response:
    """One file of the run: the accuracy plot, result tables, config, progress snapshot, model weights, log."""
    record = _job(store, job_id)
    try:
        path, data = files.read_artifact(record, name)
    except files.ArtifactNotFound as err:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=str(err)) from None
    filename = name.rsplit("/", 1)[-1]
    if path is not None:
        return FileResponse(path, media_type=files.media_type(name), filename=filename)
    return Response(data, media_type=files.media_type(name), headers={"Content-Disposition": f'attachment; filename="{filename}"'})


@router.get("/{job_id}/logs", response_class=PlainTextResponse, responses=NOT_FOUND)
def get_logs(
    job_id: JobId,
    store: StoreDep,
    runner: RunnerDep,
    lines: Annotated[int | None, Query(ge=1, le=100_000, description="only the last N lines")] = None,
) -> PlainTextResponse:
    """The driver's log from Ray Jobs (one line per epoch); at most the last MiB."""
    record = _job(store, job_id)
    return PlainTextResponse(files.tail(runner.logs(record), lines))


@router.post("/{job_id}/predict", response_model=PredictionResponse, responses={**NOT_FOUND, **CONFLICT, 413: {"description": "upload too large"}})
async def predict(
    job_id: JobId,
    files_: Annotated[list[UploadFile], File(alias="files", description="npz archives (array 'x') and/or image files")],
    store: StoreDep,
    settings: SettingsDep,
    request: Request,
) -> PredictionResponse:
    """Classify uploaded inputs with a finished job's local CNNs and DNN."""
    record = await run_in_threadpool(_job, store, job_id)
    _succeeded(record, "predictions")
    if record.config.get("sweep"):
        raise HTTPException(
            status.HTTP_409_CONFLICT,
            detail=f"job {job_id} is a sweep of many runs: download one (GET /jobs/{job_id}/artifacts, runs/<name>/) and use ddray predict",
        )
    rd = await run_in_threadpool(files.local_run, record, settings.state_dir / "cache")
    if rd is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"job {job_id} has no run folder with a trained model")
    from ddray.errors import USER_ERRORS

    if len(files_) > settings.max_files:
        raise HTTPException(status.HTTP_413_CONTENT_TOO_LARGE, detail=f"{len(files_)} files, over the limit of {settings.max_files} (DDRAY_MAX_FILES)")
    slots: asyncio.Semaphore = request.app.state.prediction_slots
    if slots.locked():
        raise HTTPException(
            status.HTTP_429_TOO_MANY_REQUESTS,
            detail=f"{settings.max_concurrent_predictions} predictions are running (DDRAY_MAX_CONCURRENT_PREDICTIONS); try again shortly",
            headers={"Retry-After": "5"},
        )
    folder = Path(tempfile.mkdtemp(prefix="ddray-predict-"))
    try:
        async with slots:
            names = await run_in_threadpool(_save_uploads, files_, folder, settings.max_upload_bytes, settings.max_decoded_bytes)
            model = await run_in_threadpool(request.app.state.models.get, record.id, rd)
            records, warnings = await run_in_threadpool(predict_files, model, folder, names)
    except (UploadError, *USER_ERRORS) as err:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, detail=_without(folder, str(err))) from None
    except (ValueError, OSError) as err:  # unreadable data in an upload
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, detail=_without(folder, f"cannot read the upload: {err}")) from None
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return PredictionResponse(job_id=record.id, count=len(records), records=records, warnings=warnings)


def _without(folder: Path, message: str) -> str:
    """An error message without the service's private temp folder in it."""
    return message.replace(f"{folder}/", "").replace(str(folder), "upload")


def _save_uploads(uploads: list[UploadFile], folder: Path, limit: int, decoded_limit: int) -> list[str]:
    """Blocking: copy the (already spooled) uploads under safe names, at most ``limit`` bytes in all,
    and check what they decode to, from headers, before anything is decoded."""
    if not uploads:
        raise UploadError("no file uploaded; send one or more files in the 'files' form field")
    names: list[str] = []
    total = 0
    for i, upload in enumerate(uploads):
        name = safe_name(upload.filename, i)
        while name in names:
            name = f"{i}_{name}"
        upload.file.seek(0)
        with open(folder / name, "wb") as out:
            while chunk := upload.file.read(1024 * 1024):
                total += len(chunk)
                if total > limit:
                    raise HTTPException(status.HTTP_413_CONTENT_TOO_LARGE, detail=f"uploads exceed {limit} bytes")
                out.write(chunk)
        names.append(name)
    decoded = sum(check_decoded_size(folder / name, decoded_limit) for name in names)
    if decoded > decoded_limit:
        raise UploadError(f"the uploads decode to {decoded} bytes, over the limit of {decoded_limit} (DDRAY_MAX_DECODED_BYTES)")
    return names


def _finite(value: Any) -> Any:
    """JSON has no NaN or infinity: such numbers of a results file are sent as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value
