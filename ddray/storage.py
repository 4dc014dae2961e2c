"""Where per-epoch training state lives: a local or shared folder, or a cloud URI.

On one machine the run folder is enough. On a multi-node cluster a worker
restarted on another node must find its predecessor's checkpoint, so the
state goes to a location every node reaches: a shared filesystem path or a
URI (``s3://``, ``gs://``, ``file://``) read and written with pyarrow's
filesystems. Training always writes a local file; for a URI it is copied up
after every epoch and fetched before a (re)start.
"""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from ddray.training.loop import Callback


def is_uri(location: str) -> bool:
    return "://" in location


def join(base: str, *parts: str) -> str:
    """Join path parts onto a folder or URI."""
    if is_uri(base):
        return "/".join([base.rstrip("/"), *parts])
    return str(Path(base, *parts))


class _UploadAfterEpoch(Callback):
    def __init__(self, local: Path, uri: str):
        self.local, self.uri = local, uri

    def on_epoch_end(self, epoch, metrics, model) -> None:
        copy_file(str(self.local), self.uri)


class _NoSync(Callback):
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


def uri_exists(uri: str) -> bool:
    import pyarrow.fs as pafs

    fs, path = pafs.FileSystem.from_uri(uri)
    return fs.get_file_info(path).type == pafs.FileType.File


@contextmanager
def checkpoint_location(location: str) -> Iterator[tuple[str, Callback]]:
    """Yield (local checkpoint path, callback that persists it after each epoch)."""
    if not is_uri(location):
        Path(location).parent.mkdir(parents=True, exist_ok=True)
        yield location, _NoSync()
        return
    with tempfile.TemporaryDirectory(prefix="ddray-ckpt-") as tmp:
        local = Path(tmp) / os.path.basename(location)
        if uri_exists(location):
            copy_file(location, str(local))
        yield str(local), _UploadAfterEpoch(local, location)


def local_copy(uri: str, cache: str | Path | None = None) -> Path:
    """A local copy of a data file or folder at ``uri`` (driver side, once per run).

    Only the driver reads data sets; workers get the arrays from Ray's object
    store, so a cloud data set is fetched once, not once per worker.
    """
    import pyarrow.fs as pafs

    fs, path = pafs.FileSystem.from_uri(uri)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        from ddray.data import DataError

        raise DataError(f"dataset path not found: {uri} (dataset.path)")
    target = Path(cache or tempfile.mkdtemp(prefix="ddray-data-")) / os.path.basename(path.rstrip("/"))
    pafs.copy_files(path, str(target), source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())
    return target
