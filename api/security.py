"""Bearer-token check and the data-path policy of submitted configs.

Data paths: a config may only name files and folders under the configured
data roots. Relative paths are taken relative to the first root; ``..``,
``~`` and absolute paths elsewhere are refused, and so is any path whose real
location (symlinks resolved, also inside a dataset folder) leaves the roots.
Only names and links are inspected here: no data file is opened.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path, PurePosixPath
from typing import Any

from fastapi import HTTPException, status


class PathNotAllowed(ValueError):
    """A config path the service will not read; ``field`` is its dotted location in the config."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def token_matches(given: str | None, expected: str) -> bool:
    return given is not None and secrets.compare_digest(given.encode(), expected.encode())


def unauthorized(detail: str) -> HTTPException:
    return HTTPException(status.HTTP_401_UNAUTHORIZED, detail=detail, headers={"WWW-Authenticate": "Bearer"})


def _under(path: Path, roots: list[Path]) -> bool:
    return any(path == r or path.is_relative_to(r) for r in roots)


def resolve_data_path(raw: str, roots: list[Path], field: str = "dataset.path", max_entries: int = 200_000) -> Path:
    """The real absolute path of ``raw`` if it stays under ``roots``; PathNotAllowed otherwise."""
    if not roots:
        raise PathNotAllowed(field, "this service has no data roots configured (DDRAY_DATA_ROOTS), so configs cannot name data paths")
    if not raw or "\x00" in raw:
        raise PathNotAllowed(field, "empty or invalid path")
    if raw.startswith("~"):
        raise PathNotAllowed(field, "'~' is not allowed; give a path relative to a data root")
    if "://" in raw:
        raise PathNotAllowed(field, "URLs are not allowed; give a path under a data root")
    if ".." in PurePosixPath(raw).parts:
        raise PathNotAllowed(field, "'..' is not allowed in data paths")
    roots = [Path(r).resolve() for r in roots]
    candidate = Path(raw) if os.path.isabs(raw) else roots[0] / raw
    if not _under(Path(os.path.normpath(candidate)), roots):
        raise PathNotAllowed(field, f"{raw} is outside the data roots ({', '.join(map(str, roots))})")
    real = candidate.resolve()  # follows every symlink on the way
    if not _under(real, roots):
        raise PathNotAllowed(field, f"{raw} leads outside the data roots through a symlink")
    if real.is_dir():
        _check_tree(real, roots, field, raw, max_entries)
    return real


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


def confine_config_paths(config: dict[str, Any], roots: list[Path], max_entries: int = 200_000) -> dict[str, Any]:
    """A copy of a validated config dict whose path fields are real absolute paths under ``roots``."""
    out = {**config, "dataset": dict(config.get("dataset") or {})}
    path = out["dataset"].get("path")
    if path is not None:
        out["dataset"]["path"] = str(resolve_data_path(str(path), roots, "dataset.path", max_entries))
    storage = out.get("storage")
    if storage is not None:
        out["storage"] = str(resolve_data_path(str(storage), roots, "storage", max_entries))
    return out
