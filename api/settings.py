"""Settings of the job service: flags of ``ddray serve`` or ``DDRAY_*`` environment variables.

Every field can be set as ``DDRAY_<FIELD>`` (e.g. ``DDRAY_API_TOKEN``,
``DDRAY_DATA_ROOTS=/data/a:/data/b``); ``ddray serve`` flags win over the
environment. The service refuses to start without a bearer token unless
``dev`` is set, in which case it makes a random one and prints it.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

PLACEHOLDER_TOKENS = {"changethis", "changeme", "secret", "token", "password"}
MIN_TOKEN_LENGTH = 16


class SettingsError(ValueError):
    """The service cannot start with these settings; the message says which one to fix."""


class ServiceSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DDRAY_", extra="ignore", validate_default=True)

    api_token: SecretStr | None = Field(None, description="bearer token every request but /healthz must carry")
    dev: bool = Field(False, description="development mode: make a random token when none is set")
    data_roots: Annotated[list[Path], NoDecode] = Field(
        default_factory=list, description="folders that dataset paths may lie under (colon-separated in the environment)"
    )
    state_dir: Path = Field(Path("ddray-service"), description="job folders, logs, the default SQLite database")
    database_url: str | None = Field(None, description="SQLAlchemy URL; default sqlite:///<state_dir>/ddray.db")
    ray_address: str | None = Field(None, description="Ray cluster for the jobs; none = the service starts a local head")
    ray_num_cpus: int | None = Field(None, ge=1, description="CPUs of the local head (default: all)")
    ray_object_store_mb: int | None = Field(None, ge=80, description="object store of the local head in MiB (default: Ray's)")
    ray_start_timeout_s: float = Field(120.0, gt=0)
    job_nice: int = Field(5, ge=0, le=19, description="niceness of the local Ray head (so its workers) and of job drivers: the web process keeps priority")
    max_concurrent_jobs: int = Field(1, ge=0, description="jobs running at once; 0 pauses dispatch (jobs stay queued)")
    max_body_bytes: int = Field(1024 * 1024, ge=1024, description="largest JSON request body")
    max_upload_bytes: int = Field(64 * 1024 * 1024, ge=1024, description="largest predict upload (all files together)")
    cancel_grace_s: float = Field(10.0, ge=0, description="seconds between SIGTERM and SIGKILL when cancelling")
    poll_interval_s: float = Field(0.5, gt=0, description="how often the runner checks its jobs")
    max_path_entries: int = Field(200_000, ge=1, description="files checked for symlink escapes under a dataset folder")

    @field_validator("data_roots", mode="before")
    @classmethod
    def _split_roots(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part for part in value.split(":") if part.strip()]
        return value

    @field_validator("data_roots")
    @classmethod
    def _absolute_roots(cls, roots: list[Path]) -> list[Path]:
        return [Path(r).expanduser().resolve() for r in roots]

    @field_validator("state_dir")
    @classmethod
    def _absolute_state(cls, state_dir: Path) -> Path:
        return Path(state_dir).expanduser().resolve()

    @model_validator(mode="after")
    def _token(self) -> "ServiceSettings":
        token = self.api_token.get_secret_value() if self.api_token else ""
        if not token:
            if not self.dev:
                raise SettingsError(
                    "no API token: set DDRAY_API_TOKEN (or ddray serve --token), e.g. "
                    "DDRAY_API_TOKEN=$(python -c 'import secrets; print(secrets.token_urlsafe(32))'); "
                    "use --dev for a random development token"
                )
            self.api_token = SecretStr(secrets.token_urlsafe(32))
        elif not self.dev and (token.lower() in PLACEHOLDER_TOKENS or len(token) < MIN_TOKEN_LENGTH):
            raise SettingsError(f"DDRAY_API_TOKEN is too weak: use at least {MIN_TOKEN_LENGTH} random characters")
        return self

    # -- derived ---------------------------------------------------------
    @property
    def token(self) -> str:
        assert self.api_token is not None
        return self.api_token.get_secret_value()

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{self.state_dir / 'ddray.db'}"

    @property
    def jobs_dir(self) -> Path:
        return self.state_dir / "jobs"
