"""Settings of the job service: flags of ``ddray serve`` or ``DDRAY_*`` environment variables.

Every field can be set as ``DDRAY_<FIELD>`` (e.g. ``DDRAY_API_TOKEN``,
``DDRAY_DATA_ROOTS=/data/a:s3://bucket/datasets``); ``ddray serve`` flags win
over the environment. Lists are colon-separated; the colon of a URI scheme
(``s3://``) does not split. The service refuses to start without a bearer token unless
``dev`` is set, in which case it makes a random one and prints it.
"""

from __future__ import annotations

import re
import secrets
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

PLACEHOLDER_TOKENS = {"changethis", "changeme", "secret", "token", "password"}
MIN_TOKEN_LENGTH = 16
_LIST_SPLIT = re.compile(r"[:,](?!//)")  # "a:s3://b/c" -> ["a", "s3://b/c"]


def split_locations(value: str) -> list[str]:
    return [part.strip() for part in _LIST_SPLIT.split(value) if part.strip()]


def normalise_location(location: str) -> str:
    """A URI without its trailing slash, or an absolute real path: the form prefix checks compare."""
    location = str(location).strip()
    if "://" in location:
        return location.rstrip("/")
    return str(Path(location).expanduser().resolve())


class SettingsError(ValueError):
    """The service cannot start with these settings; the message says which one to fix."""


class ServiceSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DDRAY_", extra="ignore", validate_default=True)

    api_token: SecretStr | None = Field(None, description="bearer token every request but /healthz must carry")
    dev: bool = Field(False, description="development mode: make a random strong token when none is set")
    data_roots: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="folders or URI prefixes (s3://bucket/data) that dataset paths may lie under (colon-separated in the environment)",
    )
    storage: str | None = Field(
        None, description="default storage of every job (a shared folder or URI such as s3://bucket/ddray-runs); each job writes under <storage>/<job id>"
    )
    storage_roots: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="further folders or URI prefixes a job's own `storage:` may lie under (colon-separated)"
    )
    state_dir: Path = Field(Path("ddray-service"), description="job folders, logs, the default SQLite database")
    database_url: str | None = Field(None, description="SQLAlchemy URL; default sqlite:///<state_dir>/ddray.db")
    ray_address: str | None = Field(
        None,
        description="Ray cluster the jobs run on as Ray jobs: 'auto' (the cluster of this machine), its GCS address host:port, "
        "or its dashboard URL http://host:8265; none = the service starts a local head",
    )
    ray_num_cpus: int | None = Field(None, ge=1, description="CPUs of the local head (default: all)")
    ray_object_store_mb: int | None = Field(None, ge=80, description="object store of the local head in MiB (default: Ray's)")
    ray_start_timeout_s: float = Field(120.0, gt=0)
    job_nice: int = Field(5, ge=0, le=19, description="niceness of the local Ray head (so its workers) and of job drivers: the web process keeps priority")
    warm_workers: int | None = Field(
        None, ge=0, description="subdomain workers kept started (torch imported) while no job runs, so the next job "
        "trains at once; they hold their CPUs while idle. Default: as many as the local head's CPUs fit; 0 on a joined "
        "cluster (idle workers would keep an autoscaler from removing nodes)"
    )
    max_concurrent_jobs: int = Field(1, ge=0, description="jobs running at once; 0 pauses dispatch (jobs stay queued)")
    max_queued_jobs: int = Field(100, ge=1, description="jobs waiting at once; more submissions get 429 with Retry-After")
    max_job_seconds: float | None = Field(
        86400.0, gt=0, description="longest a job may run before the service stops it (resources.max_runtime_s may ask for less)"
    )
    max_body_bytes: int = Field(1024 * 1024, ge=1024, description="largest JSON request body")
    max_upload_bytes: int = Field(64 * 1024 * 1024, ge=1024, description="largest predict upload (all files together)")
    max_decoded_bytes: int = Field(
        512 * 1024 * 1024, ge=1024, description="largest predict input once decoded (npz arrays read from their headers, image pixels x 4), checked before decoding"
    )
    max_files: int = Field(100, ge=1, description="most files in one predict upload")
    max_concurrent_predictions: int = Field(2, ge=1, description="predict requests served at once; more get 429 with Retry-After")
    cancel_grace_s: float = Field(10.0, ge=0, description="seconds between SIGTERM and SIGKILL when cancelling")
    poll_interval_s: float = Field(0.5, gt=0, description="how often the runner checks its jobs")
    max_path_entries: int = Field(200_000, ge=1, description="files checked for symlink escapes under a dataset folder")

    @field_validator("data_roots", "storage_roots", mode="before")
    @classmethod
    def _split_roots(cls, value: Any) -> Any:
        if isinstance(value, str):
            return split_locations(value)
        if isinstance(value, (list, tuple)):
            return [str(v) for v in value]
        return value

    @field_validator("data_roots", "storage_roots")
    @classmethod
    def _absolute_roots(cls, roots: list[Any]) -> list[str]:
        return [normalise_location(str(r)) for r in roots]

    @field_validator("storage")
    @classmethod
    def _absolute_storage(cls, storage: str | None) -> str | None:
        return normalise_location(storage) if storage and storage.strip() else None

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
        elif token.lower() in PLACEHOLDER_TOKENS or len(token) < MIN_TOKEN_LENGTH:  # development mode too
            raise SettingsError(
                f"DDRAY_API_TOKEN is too weak: use at least {MIN_TOKEN_LENGTH} random characters "
                "(or leave it unset with --dev for a random one)"
            )
        return self

    @model_validator(mode="after")
    def _roots_apart(self) -> "ServiceSettings":
        """Data is read-only input; the state dir and storage hold checkpoints the service loads back.

        A data root that overlaps either would let anyone who can write data
        plant a checkpoint or database the service then trusts.
        """
        def overlap(a: str, b: str) -> bool:
            return a == b or a.startswith(b.rstrip("/") + "/") or b.startswith(a.rstrip("/") + "/")

        state = str(self.state_dir)
        for root in self.data_roots:
            for other, what in [(state, "the state dir (DDRAY_STATE_DIR)")] + [(s, "storage (DDRAY_STORAGE / DDRAY_STORAGE_ROOTS)") for s in self.allowed_storage]:
                if overlap(root, other):
                    raise SettingsError(f"data root {root} overlaps {what} {other}: keep data roots apart from where the service writes")
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

    @property
    def allowed_storage(self) -> list[str]:
        """Where a job's ``storage:`` may point: DDRAY_STORAGE and DDRAY_STORAGE_ROOTS."""
        return ([self.storage] if self.storage else []) + [r for r in self.storage_roots if r != self.storage]
