"""Errors that mean 'your input is wrong' (CLI exit code 2, HTTP 422), gathered in one tuple."""

from __future__ import annotations

from ddray.config import ConfigError
from ddray.data import DataError
from ddray.decomposition import DecompositionError
from ddray.models.registry import UnknownModelError
from ddray.run_dir import RunDirError


class ResourceError(RuntimeError):
    """The Ray cluster can never satisfy the requested per-subdomain resources."""


class JobFailed(RuntimeError):
    """Training failed after the input was accepted (CLI exit code 1); the message names what and why."""


class SubdomainFailed(JobFailed):
    """A subdomain's training failed after all retries; the message names the subdomain and cause."""


class BaselineFailed(JobFailed):
    """A comparison model's Ray Train job failed; names the models and the cause."""


USER_ERRORS: tuple[type[BaseException], ...] = (
    ConfigError,
    DataError,
    DecompositionError,
    UnknownModelError,
    RunDirError,
    ResourceError,
)
