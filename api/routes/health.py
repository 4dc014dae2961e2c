"""/healthz: the service, its database and the Ray cluster (no token needed; no addresses shown)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from api.deps import RunnerDep, StoreDep
from api.schemas import Health

router = APIRouter(tags=["health"])

RAY_OK = ("running", "external", "paused")
RAY_STARTING = ("starting", "stopped")


@router.get("/healthz", response_model=Health, responses={503: {"model": Health, "description": "database or Ray unreachable"}})
async def healthz(store: StoreDep, runner: RunnerDep) -> JSONResponse:
    try:
        counts = await run_in_threadpool(store.count, ["queued", "running"])
        database = "ok"
    except Exception as err:  # noqa: BLE001 - reported as unhealthy
        counts, database = {}, f"error: {type(err).__name__}"
    ray = await runner.health()
    if database != "ok" or ray.get("status") not in RAY_OK + RAY_STARTING:
        overall, code = "degraded", 503
    elif ray.get("status") in RAY_STARTING:
        overall, code = "starting", 200
    else:
        overall, code = "ok", 200
    body = Health(status=overall, database=database, ray=ray, jobs=counts)
    return JSONResponse(body.model_dump(mode="json"), status_code=code)
