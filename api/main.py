"""The FastAPI application factory (no app is built at import time)."""

from __future__ import annotations

import asyncio
import json
import logging
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

import ddray
from api.deps import get_runner
from api.files import JobViewCache, JsonFileCache
from api.predict import ModelCache
from api.routes import health, jobs, suggest
from api.runner import JobRunner, Runner
from api.security import token_problem
from api.settings import ServiceSettings
from api.store import JobStore

log = logging.getLogger("ddray.api")


class BodyTooLarge(Exception):
    pass


class BodySizeLimit:
    """413 for request bodies over the limit: ``max_upload_bytes`` on /predict, ``max_body_bytes`` elsewhere.

    Checks Content-Length up front and counts streamed bytes, so chunked
    bodies are cut off too; nothing past the limit is read.
    """

    def __init__(self, app: ASGIApp, max_body: int, max_upload: int):
        self.app = app
        self.max_body = max_body
        self.max_upload = max_upload

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.max_upload + 16 * 1024 if scope["path"].endswith("/predict") else self.max_body
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    too_big = int(value) > limit
                except ValueError:
                    too_big = False
                if too_big:
                    await self._reject(send, limit)
                    return
        received = 0
        exceeded = False
        started = False

        async def limited_receive() -> Message:
            nonlocal received, exceeded
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    exceeded = True
                    raise BodyTooLarge()
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if exceeded:
                return  # the app's own error reply is replaced by the 413
            started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except BodyTooLarge:
            pass
        if exceeded and not started:
            await self._reject(send, limit)

    @staticmethod
    async def _reject(send: Send, limit: int) -> None:
        body = b'{"detail":"request body too large (limit %d bytes)"}' % limit
        await send({"type": "http.response.start", "status": 413, "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


class TokenGate:
    """401 for any request under ``/jobs`` without the bearer token, before a byte of its body is read.

    FastAPI resolves a route's dependencies only after it has parsed (and, for
    uploads, spooled to disk) the whole body, so a route dependency alone lets
    a client without a token make the service receive gigabytes. This gate
    answers from the headers. The comparison is constant-time.
    """

    def __init__(self, app: ASGIApp, token: str):
        self.app = app
        self.token = token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and (scope["path"] == "/jobs" or scope["path"].startswith("/jobs/")):
            problem = token_problem(_bearer(scope), self.token)
            if problem is not None:
                body = json.dumps({"detail": problem}).encode()
                await send({"type": "http.response.start", "status": 401, "headers": [
                    (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                    (b"www-authenticate", b"Bearer"), (b"connection", b"close")]})
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)


def _bearer(scope: Scope) -> str | None:
    """The credentials of an ``Authorization: Bearer ...`` header (scheme case-insensitive), else None."""
    for name, value in scope.get("headers", []):
        if name == b"authorization":
            scheme, _, credentials = value.decode("latin-1").partition(" ")
            return credentials.strip() if scheme.lower() == "bearer" and credentials.strip() else None
    return None


class JobPollFastPath:
    """Answers ``GET /jobs/{id}`` from the rendered-view cache without entering the framework.

    Clients poll this endpoint (the issue's load target is 200 requests/s next
    to a training job on two cores), so a cache hit costs a dict lookup and a
    ``stat``. It sits behind :class:`TokenGate`, which has checked the token;
    misses and other paths go through the normal route.
    """

    def __init__(self, app: ASGIApp, views: JobViewCache, store: JobStore):
        self.app = app
        self.views = views
        self.store = store

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "GET":
            path: str = scope["path"]
            if path.startswith("/jobs/") and path.count("/") == 2 and not scope.get("query_string"):
                body = self.views.get(path[6:], self.store)
                if body is not None:
                    await send({"type": "http.response.start", "status": 200, "headers": [
                        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
                    await send({"type": "http.response.body", "body": body})
                    return
        await self.app(scope, receive, send)


async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    """422 naming each field and problem; the offending input is not echoed.

    FastAPI's default echoes ``input``, which breaks on non-finite numbers
    (``"lr": NaN`` became a 500) and repeats whatever a client sent.
    """
    detail = [
        {"type": e.get("type"), "loc": list(e.get("loc", ())), "msg": str(e.get("msg", "")).removeprefix("Value error, ")}
        for e in exc.errors()
    ]
    return JSONResponse({"detail": detail}, status_code=422)


def _runner_of(app: FastAPI) -> Runner:
    """The runner the routes will see: a ``dependency_overrides[get_runner]`` (zero-argument) wins."""
    override = app.dependency_overrides.get(get_runner)
    return override() if override is not None else app.state.runner


def create_app(settings: ServiceSettings, runner: Runner | None = None, store: JobStore | None = None) -> FastAPI:
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    store = store or JobStore(settings.db_url)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        active = _runner_of(app)
        await active.start()
        try:
            yield
        finally:
            await active.stop()
            store.close()

    app = FastAPI(
        title="ddray job service",
        version=ddray.__version__,
        description=(
            "Submit ddray domain-decomposition jobs, watch their progress, cancel them, fetch results and "
            "classify new images with a finished job. Every endpoint but /healthz needs "
            "`Authorization: Bearer <DDRAY_API_TOKEN>`."
        ),
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.store = store
    app.state.runner = runner if runner is not None else JobRunner(settings, store)
    app.state.json_cache = JsonFileCache()
    app.state.job_views = JobViewCache()
    app.state.models = ModelCache()
    app.state.prediction_slots = asyncio.Semaphore(settings.max_concurrent_predictions)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.include_router(health.router)
    app.include_router(jobs.router)
    app.include_router(suggest.router)
    app.add_middleware(BodySizeLimit, max_body=settings.max_body_bytes, max_upload=settings.max_upload_bytes)
    app.add_middleware(JobPollFastPath, views=app.state.job_views, store=store)
    app.add_middleware(TokenGate, token=settings.token)  # outermost: nothing is read before the token is checked
    return app


def describe(settings: ServiceSettings) -> dict[str, Any]:
    """Settings safe to log (no token)."""
    return {
        "state_dir": str(settings.state_dir),
        "database": settings.db_url.split("@")[-1],
        "data_roots": settings.data_roots,
        "storage": settings.storage,
        "storage_roots": settings.storage_roots,
        "ray_address": settings.ray_address or "local head",
        "max_concurrent_jobs": settings.max_concurrent_jobs,
    }
