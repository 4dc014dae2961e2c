"""POST /suggest: ``ddray suggest`` over REST (docs/suggest.md).

Bounded work: the data path must lie under the service's data roots (as for jobs), the data's size
is checked from its headers against the limits before it is loaded, one suggestion runs at a time
(a second request gets 429), and the request returns 504 after ``SUGGEST_TIMEOUT_S`` (the timing
thread then finishes its few steps and frees the slot).
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from fastapi import APIRouter, Depends, HTTPException, status
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict, Field

from api.deps import SettingsDep, require_token
from api.schemas import ErrorMessage
from api.security import PathNotAllowed, confine_config_paths
from ddray.errors import USER_ERRORS

SUGGEST_TIMEOUT_S = 120.0
_ONE_AT_A_TIME = threading.BoundedSemaphore(1)

router = APIRouter(
    tags=["suggest"],
    dependencies=[Depends(require_token)],
    responses={401: {"model": ErrorMessage, "description": "missing or wrong bearer token"}},
)


class SuggestRequest(BaseModel):
    """A config holding at least ``dataset:``, and the resources the run may use."""

    model_config = ConfigDict(extra="forbid")

    config: dict[str, Any] = Field(description="a config with at least a dataset: section")
    gpus: float = Field(0.0, ge=0.0, le=1024.0)
    cpus: int | None = Field(None, ge=1, le=100_000, description="default: the service machine's CPUs")
    hours: float | None = Field(None, gt=0.0, le=10_000.0, description="time budget; epochs are chosen to fit it")


class SuggestResponse(BaseModel):
    config_yaml: str = Field(description="the suggested config with a comment on every choice")
    config: dict[str, Any]
    predicted_wall_s: float
    data: dict[str, Any]
    candidates: list[dict[str, Any]]


def _suggest(body: SuggestRequest, config: dict[str, Any]) -> SuggestResponse:
    from dataclasses import asdict

    from ddray.suggest import suggest

    try:
        result = suggest(config, cpus=body.cpus, gpus=body.gpus, hours=body.hours)
    finally:
        _ONE_AT_A_TIME.release()
    return SuggestResponse(config_yaml=result.text, config=result.config.model_dump(mode="json"),
                           predicted_wall_s=round(result.predicted_wall_s, 1), data=asdict(result.facts),
                           candidates=[asdict(c) for c in result.candidates])


@router.post(
    "/suggest",
    response_model=SuggestResponse,
    responses={
        422: {"description": "no dataset section, an invalid dataset key (named), or a data path outside the data roots"},
        429: {"model": ErrorMessage, "description": "another suggestion is running"},
        504: {"model": ErrorMessage, "description": "the suggestion took longer than the service allows"},
    },
)
async def create_suggestion(body: SuggestRequest, settings: SettingsDep) -> SuggestResponse:
    """Inspect the data, time a few training steps of candidate local models, return a complete runnable config."""
    dataset = body.config.get("dataset")
    if not isinstance(dataset, dict):
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, detail=[{"loc": ["body", "config", "dataset"],
                            "msg": "a dataset: section is required", "type": "missing"}])
    try:
        config = confine_config_paths({"dataset": dataset}, settings.data_roots, settings.allowed_storage, settings.max_path_entries)
    except PathNotAllowed as err:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT,
                            detail=[{"loc": ["body", "config", *err.field.split(".")], "msg": err.message, "type": err.kind}]) from None
    if not _ONE_AT_A_TIME.acquire(blocking=False):
        raise HTTPException(status.HTTP_429_TOO_MANY_REQUESTS, detail="another suggestion is running; try again shortly",
                            headers={"Retry-After": "10"})
    try:
        return await asyncio.wait_for(run_in_threadpool(_suggest, body, config), timeout=SUGGEST_TIMEOUT_S)
    except asyncio.TimeoutError:
        raise HTTPException(status.HTTP_504_GATEWAY_TIMEOUT, detail=f"the suggestion took over {SUGGEST_TIMEOUT_S:.0f} s") from None
    except USER_ERRORS as err:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT,
                            detail=[{"loc": ["body", "config"], "msg": str(err), "type": "invalid_input"}]) from None
