"""/healthz: the service, its database and the Ray cluster.

Without the token it says only ok / starting / degraded (what a load balancer
needs); the details (resources, job counts, cluster errors) need the token.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials

from api.deps import RunnerDep, SettingsDep, StoreDep, bearer_scheme
from api.schemas import Health
from api.security import token_problem

router = APIRouter(tags=["health"])

RAY_OK = ("running", "external", "paused")
RAY_STARTING = ("starting", "stopped")


@router.get("/healthz", response_model=Health, responses={503: {"model": Health, "description": "database or Ray unreachable"}})
async def healthz(
    store: StoreDep,
    runner: RunnerDep,
    settings: SettingsDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)],
) -> JSONResponse:
    """Health for anyone; with the bearer token also the database, Ray resources and job counts."""
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
    if token_problem(credentials.credentials if credentials else None, settings.token) is not None:
        return JSONResponse({"status": overall}, status_code=code)
    body = Health(status=overall, database=database, ray=ray, jobs=counts)
    return JSONResponse(body.model_dump(mode="json", exclude_none=True), status_code=code)
