"""Storage: local folders and URIs (``s3://``, ``gs://``, ``file://``) through pyarrow.fs.

One storage *base* per cluster or config (``storage:``, else the
``DDRAY_STORAGE`` environment variable); every run gets its own *prefix*
``<base>/<run_id>`` under it (:func:`run_prefix`), never shared with another
run. Under the prefix live the run's per-epoch training state (``state/``),
its Ray Tune and Ray Train experiments (``tune/``, ``baselines/``) and, when
the run ends, a copy of its whole run folder (:func:`upload_tree`).

On a multi-node cluster a worker restarted on another node must find its
predecessor's checkpoint, so the state goes to a location every node
reaches: a shared filesystem path or a URI. Training always writes a local
file; for a URI it is copied up after every epoch and fetched before a
(re)start (:func:`checkpoint_location`).

URIs are joined as strings (``Path`` would turn ``s3://b`` into ``s3:/b``).
S3-compatible servers are reached through the standard ``AWS_ENDPOINT_URL``
environment variable, which pyarrow honours. This module imports neither
torch nor Ray: the REST service uses it too.
"""

from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

STORAGE_ENV = "DDRAY_STORAGE"


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> None:
    """Have ``write`` fill a temporary file beside ``path``, then rename it over ``path``.

    The one way ddray writes a local file that others read while it runs (results, progress,
    checkpoints, saved models): a reader, or a run killed mid-write, sees the old file or the
    new one, never half of one. The temporary name keeps the suffix, so ``np.savez`` and
    ``torch.save`` write exactly the name they are given.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json(path: str | Path, data: Any) -> None:
    """Indented JSON, atomically; numpy scalars and arrays become numbers and lists."""
    text = json.dumps(data, indent=2, default=_json_default)
    atomic_write(path, lambda tmp: tmp.write_text(text))


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "item"):
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    return str(obj)


def is_uri(location: str) -> bool:
    """True for ``scheme://...`` locations (s3, gs, file, ...), False for plain filesystem paths."""
    return "://" in str(location)


def join(base: str, *parts: str) -> str:
    """Join path parts onto a folder or URI (a URI's ``?query`` stays at the end)."""
    base = str(base)
    if is_uri(base):
        head, sep, query = base.partition("?")
        joined = "/".join([head.rstrip("/"), *(p.strip("/") for p in parts)])
        return joined + sep + query
    return str(Path(base, *parts))


def storage_base(config_storage: str | None) -> str | None:
    """The storage base of a run: the config's ``storage:``, else ``$DDRAY_STORAGE``, else None (run folder only)."""
    return config_storage or os.environ.get(STORAGE_ENV) or None


def run_prefix(base: str | None, run_id: str) -> str | None:
    """``<base>/<run_id>``: where one run keeps everything it stores; None without a base.

    A local base is made absolute (Ray Train/Tune need absolute storage paths).
    """
    if not base:
        return None
    if not is_uri(base):
        base = str(Path(base).expanduser().resolve())
    return join(base, run_id)


def _fs(location: str):
    """(pyarrow filesystem, path on it) for a local path or URI."""
    import pyarrow.fs as pafs

    if is_uri(location):
        return pafs.FileSystem.from_uri(str(location))
    return pafs.LocalFileSystem(), str(Path(location).expanduser().resolve())


def _make_parent(fs, path: str) -> None:
    """Create the folder of ``path`` on local filesystems (paths or file:// URIs); object stores need none."""
    import pyarrow.fs as pafs

    parent = path.rsplit("/", 1)[0]
    if parent and isinstance(fs, pafs.LocalFileSystem):
        fs.create_dir(parent, recursive=True)


def _files_under(fs, path: str) -> dict[str, object]:
    """{relative POSIX path: FileInfo} of every file below ``path`` (empty when nothing is there)."""
    import pyarrow.fs as pafs

    top = fs.get_file_info(path)
    if top.type != pafs.FileType.Directory:
        return {}
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=True, allow_not_found=True))
    root = path.rstrip("/") + "/"
    return {i.path[len(root):]: i for i in infos if i.type == pafs.FileType.File and i.path.startswith(root)}


def list_files(prefix: str) -> list[str]:
    """Relative POSIX paths of all files under a folder or URI prefix, sorted; [] if there are none."""
    fs, path = _fs(prefix)
    return sorted(_files_under(fs, path))


def is_empty(prefix: str) -> bool:
    """True when nothing (no file, no folder entry) exists at or under ``prefix``."""
    import pyarrow.fs as pafs

    fs, path = _fs(prefix)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        return True
    if info.type != pafs.FileType.Directory:
        return False
    return not fs.get_file_info(pafs.FileSelector(path, recursive=False, allow_not_found=True))


def exists(location: str) -> bool:
    """True when ``location`` is an existing file (not a folder)."""
    import pyarrow.fs as pafs

    fs, path = _fs(location)
    return fs.get_file_info(path).type == pafs.FileType.File


def read_bytes(location: str) -> bytes:
    """The content of a file given as a local path or URI (FileNotFoundError when absent)."""
    fs, path = _fs(location)
    with fs.open_input_stream(path) as f:
        return f.read()


def write_bytes(location: str, data: bytes) -> None:
    """Write a whole file at a local path or URI, creating its folder."""
    fs, path = _fs(location)
    _make_parent(fs, path)
    with fs.open_output_stream(path) as f:
        f.write(data)


def _unchanged(local: os.stat_result, remote) -> bool:
    """Same size and the stored copy is not older than the local file: skip it."""
    mtime = getattr(remote, "mtime_ns", None)
    return remote.size == local.st_size and mtime is not None and mtime >= local.st_mtime_ns


def upload_tree(local_dir, prefix: str) -> int:
    """Copy every file under ``local_dir`` to ``prefix`` under the same relative paths; the number copied.

    Files already stored with the same size and not older than the local file are skipped.
    """
    import pyarrow.fs as pafs

    local_dir = Path(local_dir)
    if not local_dir.is_dir():
        return 0
    fs, base = _fs(prefix)
    stored = _files_under(fs, base)
    local_fs, copied = pafs.LocalFileSystem(), 0
    for file in sorted(p for p in local_dir.rglob("*") if p.is_file()):
        rel = file.relative_to(local_dir).as_posix()
        remote = stored.get(rel)
        if remote is not None and _unchanged(file.stat(), remote):
            continue
        target = f"{base.rstrip('/')}/{rel}"
        _make_parent(fs, target)
        pafs.copy_files(str(file), target, source_filesystem=local_fs, destination_filesystem=fs)
        copied += 1
    return copied


def download_tree(prefix: str, local_dir) -> int:
    """Copy every file under ``prefix`` into ``local_dir`` (created) under the same relative paths; the number copied."""
    import pyarrow.fs as pafs

    fs, base = _fs(prefix)
    local_dir = Path(local_dir)
    local_dir.mkdir(parents=True, exist_ok=True)
    local_fs, copied = pafs.LocalFileSystem(), 0
    for rel in sorted(_files_under(fs, base)):
        target = local_dir / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        pafs.copy_files(f"{base.rstrip('/')}/{rel}", str(target), source_filesystem=fs, destination_filesystem=local_fs)
        copied += 1
    return copied


# ------------------------------------------------------------------ per-epoch state of a subdomain


class _UploadAfterEpoch:
    """Training callback (see ddray.training.loop.Callback): copy the local checkpoint up after each
    epoch that wrote one (``training.checkpoint_every`` sets how often that is)."""

    def __init__(self, local: Path, uri: str):
        self.local, self.uri = local, uri
        self.uploaded: tuple[int, int] | None = self._version()

    def _version(self) -> tuple[int, int] | None:
        try:
            st = self.local.stat()
        except FileNotFoundError:
            return None
        return st.st_mtime_ns, st.st_size

    def on_epoch_end(self, epoch, metrics, model) -> None:
        version = self._version()
        if version is not None and version != self.uploaded:
            copy_file(str(self.local), self.uri)
            self.uploaded = version


class _NoSync:
    def on_epoch_end(self, epoch, metrics, model) -> None:
        pass


def copy_file(src: str, dst: str) -> None:
    """Copy between local paths and URIs (pyarrow.fs understands both), creating the target folder."""
    import pyarrow.fs as pafs

    if is_uri(dst):
        fs, path = pafs.FileSystem.from_uri(dst)
        fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    else:
        Path(dst).parent.mkdir(parents=True, exist_ok=True)
    pafs.copy_files(src, dst)


@contextmanager
def checkpoint_location(location: str) -> Iterator[tuple[str, object]]:
    """Yield (local checkpoint path, callback that persists it after each epoch)."""
    if not is_uri(location):
        Path(location).parent.mkdir(parents=True, exist_ok=True)
        yield location, _NoSync()
        return
    with tempfile.TemporaryDirectory(prefix="ddray-ckpt-") as tmp:
        local = Path(tmp) / os.path.basename(location)
        if exists(location):
            copy_file(location, str(local))
        yield str(local), _UploadAfterEpoch(local, location)


# ------------------------------------------------------------------ data sets


def local_copy(uri: str, cache: str | Path | None = None) -> Path:
    """A local copy of a data file or folder at ``uri`` (driver side, once per run).

    Only the driver reads data sets; workers get the arrays from Ray's object
    store, so a cloud data set is fetched once, not once per worker.
    DataError names the URI when it is missing or unreadable.
    """
    import pyarrow.fs as pafs

    from ddray.data import DataError

    try:
        fs, path = pafs.FileSystem.from_uri(uri)
        info = fs.get_file_info(path)
    except (OSError, ValueError) as err:
        raise DataError(f"cannot open dataset.path {uri}: {err}") from None
    if info.type == pafs.FileType.NotFound:
        raise DataError(f"dataset path not found: {uri} (dataset.path); check the bucket, the key and the credentials")
    target = Path(cache or tempfile.mkdtemp(prefix="ddray-data-")) / os.path.basename(path.rstrip("/"))
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        if info.type == pafs.FileType.Directory:
            copied = download_tree(uri, target)
            if not copied:
                raise DataError(f"dataset folder {uri} (dataset.path) holds no files")
        else:
            pafs.copy_files(path, str(target), source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())
    except OSError as err:
        raise DataError(f"cannot read dataset.path {uri}: {err}") from None
    return target
