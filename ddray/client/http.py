"""A small HTTP client of the job service (used by ``ddray submit/status/cancel/results``)."""

from __future__ import annotations

import os
from typing import Any

import httpx

from ddray.storage import atomic_write

DEFAULT_URL = "http://127.0.0.1:8000"


class ClientError(RuntimeError):
    """A request the service refused or could not answer; the message says what to do."""


class ServiceClient:
    def __init__(self, url: str | None = None, token: str | None = None, timeout: float = 30.0):
        self.url = (url or os.environ.get("DDRAY_URL") or DEFAULT_URL).rstrip("/")
        self.token = token if token is not None else os.environ.get("DDRAY_API_TOKEN")
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        self.http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> "ServiceClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- plumbing ------------------------------------------------------------
    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.ConnectError:
            raise ClientError(f"cannot reach the ddray service at {self.url}: is `ddray serve` running? (set --url or DDRAY_URL)") from None
        except httpx.TimeoutException:
            raise ClientError(f"the ddray service at {self.url} did not answer in time") from None
        if response.status_code < 400:
            return response
        detail = _detail(response)
        if response.status_code == 401:
            hint = "set DDRAY_API_TOKEN or --token" if not self.token else "the token is wrong"
            raise ClientError(f"not authorized ({detail}): {hint}")
        if response.status_code == 404:
            raise ClientError(f"not found: {detail}")
        if response.status_code == 422:
            raise ClientError(f"rejected: {detail}")
        raise ClientError(f"HTTP {response.status_code}: {detail}")

    # -- endpoints ---------------------------------------------------------------
    def submit(self, config: dict[str, Any], name: str | None = None) -> dict[str, Any]:
        return self.request("POST", "/jobs", json={"name": name, "config": config}).json()

    def list(self, status: str | None = None, limit: int = 20, offset: int = 0) -> dict[str, Any]:
        params: dict[str, Any] = {"limit": limit, "offset": offset}
        if status:
            params["status"] = status
        return self.request("GET", "/jobs", params=params).json()

    def get(self, job_id: str) -> dict[str, Any]:
        return self.request("GET", f"/jobs/{job_id}").json()

    def cancel(self, job_id: str) -> dict[str, Any]:
        return self.request("POST", f"/jobs/{job_id}/cancel").json()

    def results(self, job_id: str) -> dict[str, Any]:
        return self.request("GET", f"/jobs/{job_id}/results").json()

    def logs(self, job_id: str, lines: int | None = None) -> str:
        return self.request("GET", f"/jobs/{job_id}/logs", params={"lines": lines} if lines else None).text

    def artifact(self, job_id: str, name: str) -> bytes:
        return self.request("GET", f"/jobs/{job_id}/artifacts/{name}").content

    def artifacts(self, job_id: str) -> dict[str, Any]:
        return self.request("GET", f"/jobs/{job_id}/artifacts").json()

    def download_artifact(self, job_id: str, name: str, target: str | os.PathLike) -> None:
        """Streamed to ``target`` through a temporary file, so a broken transfer leaves no half file."""

        def stream(tmp) -> None:
            with self.http.stream("GET", f"/jobs/{job_id}/artifacts/{name}") as response:
                if response.status_code >= 400:
                    response.read()
                    raise ClientError(f"cannot download {name} of job {job_id}: HTTP {response.status_code}: {_detail(response)}")
                with open(tmp, "wb") as fh:
                    for chunk in response.iter_bytes():
                        fh.write(chunk)

        try:
            atomic_write(target, stream)
        except httpx.HTTPError as err:
            raise ClientError(f"cannot download {name} of job {job_id}: {err}") from None

    def predict(self, job_id: str, paths: list[str]) -> dict[str, Any]:
        handles = [open(p, "rb") for p in paths]
        try:
            files = [("files", (os.path.basename(p), fh)) for p, fh in zip(paths, handles)]
            return self.request("POST", f"/jobs/{job_id}/predict", files=files).json()
        finally:
            for fh in handles:
                fh.close()

    def health(self) -> dict[str, Any]:
        return self.request("GET", "/healthz").json()


def _detail(response: httpx.Response) -> str:
    try:
        detail = response.json().get("detail", response.text)
    except ValueError:
        return response.text[:500]
    if isinstance(detail, list):  # FastAPI validation errors: name every field
        return "; ".join(
            f"{'.'.join(str(p) for p in d.get('loc', []) if p != 'body')}: {d.get('msg')}" if isinstance(d, dict) else str(d)
            for d in detail
        )
    return str(detail)
