"""Dependencies of the routes, as ``Annotated`` aliases; tests swap them with ``app.dependency_overrides``.

They are ``async`` because they never block: FastAPI would run plain ``def``
dependencies in its threadpool, a thread hop on every request.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from api.runner import Runner
from api.security import token_problem, unauthorized
from api.settings import ServiceSettings
from api.store import JobStore

bearer_scheme = HTTPBearer(auto_error=False, description="the service's API token (DDRAY_API_TOKEN)")


async def get_settings(request: Request) -> ServiceSettings:
    return request.app.state.settings


async def get_store(request: Request) -> JobStore:
    return request.app.state.store


async def get_runner(request: Request) -> Runner:
    return request.app.state.runner


SettingsDep = Annotated[ServiceSettings, Depends(get_settings)]
StoreDep = Annotated[JobStore, Depends(get_store)]
RunnerDep = Annotated[Runner, Depends(get_runner)]


async def require_token(
    settings: SettingsDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)],
) -> None:
    """401 unless the request carries ``Authorization: Bearer <DDRAY_API_TOKEN>``.

    Under ``/jobs`` the ASGI :class:`api.main.TokenGate` has already refused a
    request without it (before its body was read); this dependency is the
    same check for routes elsewhere, and what declares the scheme in OpenAPI.
    """
    problem = token_problem(credentials.credentials if credentials else None, settings.token)
    if problem is not None:
        raise unauthorized(problem)
