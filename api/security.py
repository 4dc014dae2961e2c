"""Bearer-token check and the data-path policy of submitted configs.

Data paths: a config may only name files and folders under the configured
data roots, which are local folders or URI prefixes (``s3://bucket/data``).
Relative paths are taken relative to the first local root; ``..``, ``~`` and
absolute paths or URIs elsewhere are refused, and so is any local path whose
real location (symlinks resolved, also inside a dataset folder) leaves the
roots. A URI must exist (one metadata request). No data file is opened.

Storage: a job's ``storage:`` must lie under the service's ``DDRAY_STORAGE``
or one of ``DDRAY_STORAGE_ROOTS`` (same rules), because the service reads and
serves whatever lies there as the job's results.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path, PurePosixPath
from typing import Any

from fastapi import HTTPException, status


class PathNotAllowed(ValueError):
    """A config path the service will not read; ``field`` is its dotted location in the config."""

    def __init__(self, field: str, message: str, kind: str = "path_not_allowed"):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message
        self.kind = kind


def token_matches(given: str | None, expected: str) -> bool:
    return given is not None and secrets.compare_digest(given.encode(), expected.encode())


def token_problem(given: str | None, expected: str) -> str | None:
    """Why a request's bearer credentials are refused, or None when they are the token (constant-time)."""
    if given is None:
        return "missing bearer token: send 'Authorization: Bearer <token>'"
    if not token_matches(given, expected):
        return "invalid bearer token"
    return None


def unauthorized(detail: str) -> HTTPException:
    return HTTPException(status.HTTP_401_UNAUTHORIZED, detail=detail, headers={"WWW-Authenticate": "Bearer"})


def _under(path: Path, roots: list[Path]) -> bool:
    return any(path == r or path.is_relative_to(r) for r in roots)


def _uri_under(uri: str, roots: list[str]) -> bool:
    return any(uri == r or uri.startswith(r + "/") for r in roots)


def resolve_location(
    raw: str, roots: list[str], field: str, *, what: str, setting: str, max_entries: int = 200_000, must_exist: bool = True
) -> str:
    """``raw`` as a real absolute path or a normalised URI if it stays under ``roots``; PathNotAllowed otherwise.

    ``what`` names the kind of root in messages ("data roots"), ``setting`` the
    variable that configures them (DDRAY_DATA_ROOTS).
    """
    listed = ", ".join(roots)
    if not roots:
        raise PathNotAllowed(field, f"this service has no {what} configured ({setting}), so configs cannot name one")
    if not raw or "\x00" in raw:
        raise PathNotAllowed(field, "empty or invalid path")
    if raw.startswith("~"):
        raise PathNotAllowed(field, f"'~' is not allowed; give a location under the {what} ({listed})")
    parts = PurePosixPath(raw.split("://", 1)[-1]).parts
    if ".." in parts:
        raise PathNotAllowed(field, f"'..' is not allowed; give a location under the {what} ({listed})")
    if "://" in raw:
        uri = raw.rstrip("/")
        if not _uri_under(uri, [r for r in roots if "://" in r]):
            raise PathNotAllowed(field, f"{raw} is outside the {what}; allowed prefixes: {listed}")
        if must_exist and not _uri_exists(uri, field):
            raise PathNotAllowed(field, f"{raw} does not exist (allowed prefixes: {listed})", kind="path_not_found")
        return uri
    local_roots = [Path(r) for r in roots if "://" not in r]
    if not local_roots:
        raise PathNotAllowed(field, f"{raw} is outside the {what}; allowed prefixes: {listed}")
    candidate = Path(raw) if os.path.isabs(raw) else local_roots[0] / raw
    if not _under(Path(os.path.normpath(candidate)), local_roots):
        raise PathNotAllowed(field, f"{raw} is outside the {what}; allowed prefixes: {listed}")
    real = candidate.resolve()  # follows every symlink on the way
    if not _under(real, local_roots):
        raise PathNotAllowed(field, f"{raw} leads outside the {what} through a symlink")
    if must_exist and not real.exists():
        raise PathNotAllowed(field, f"no such file or folder under the {what}: {raw}", kind="path_not_found")
    if must_exist and real.is_dir():  # data is read from there: no link inside may leave the roots
        _check_tree(real, local_roots, field, raw, max_entries)
    return str(real)


def _uri_exists(uri: str, field: str) -> bool:
    """A file, or a folder (prefix) holding something; pyarrow honours AWS_ENDPOINT_URL."""
    import pyarrow.fs as pafs

    try:
        fs, path = pafs.FileSystem.from_uri(uri)
        info = fs.get_file_info(path)
    except (OSError, ValueError) as err:
        raise PathNotAllowed(field, f"{uri} cannot be read: {err}", kind="path_not_found") from None
    return info.type != pafs.FileType.NotFound


def resolve_data_path(raw: str, roots: list[str], field: str = "dataset.path", max_entries: int = 200_000) -> str:
    return resolve_location(raw, roots, field, what="data roots", setting="DDRAY_DATA_ROOTS", max_entries=max_entries)


def _check_tree(folder: Path, roots: list[Path], field: str, raw: str, max_entries: int) -> None:
    """No symlink inside a dataset folder may point outside the roots."""
    seen = 0
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=False):
        for name in dirnames + filenames:
            seen += 1
            if seen > max_entries:
                raise PathNotAllowed(field, f"{raw} holds more than {max_entries} entries; the service cannot vet it")
            entry = Path(dirpath) / name
            if entry.is_symlink() and not _under(entry.resolve(), roots):
                raise PathNotAllowed(field, f"{entry} leads outside the data roots through a symlink")


def confine_config_paths(
    config: dict[str, Any], data_roots: list[str], storage_roots: list[str], max_entries: int = 200_000
) -> dict[str, Any]:
    """A copy of a validated config dict whose locations are real absolute paths or URIs under their roots."""
    out = {**config, "dataset": dict(config.get("dataset") or {})}
    path = out["dataset"].get("path")
    if path is not None:
        out["dataset"]["path"] = resolve_data_path(str(path), data_roots, "dataset.path", max_entries)
    storage = out.get("storage")
    if storage is not None:
        out["storage"] = resolve_location(
            str(storage), storage_roots, "storage", what="storage roots", setting="DDRAY_STORAGE or DDRAY_STORAGE_ROOTS",
            max_entries=max_entries, must_exist=False,
        )
    return out
