"""ddray.storage: the same functions on local folders and on a real S3-compatible server (moto)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest

from ddray import storage
from ddray.data import DataError

BUCKET = "ddray-storage-tests"


# ------------------------------------------------------------------ pure path logic


def test_join_keeps_uris_intact_and_uses_paths_locally():
    assert storage.join("s3://bucket/runs/", "abc", "state") == "s3://bucket/runs/abc/state"
    assert storage.join("s3://bucket", "x.npz") == "s3://bucket/x.npz"  # Path() would give s3:/bucket
    assert storage.join("s3://b/runs?endpoint_override=h:9000", "id") == "s3://b/runs/id?endpoint_override=h:9000"
    assert storage.join("file:///tmp/store", "id") == "file:///tmp/store/id"
    assert storage.join("/data/store", "id", "tune") == "/data/store/id/tune"
    assert storage.is_uri("gs://b/x") and storage.is_uri("file:///x") and not storage.is_uri("/a/b")


def test_storage_base_prefers_config_then_environment(monkeypatch):
    monkeypatch.delenv("DDRAY_STORAGE", raising=False)
    assert storage.storage_base(None) is None
    monkeypatch.setenv("DDRAY_STORAGE", "s3://cluster-wide/runs")
    assert storage.storage_base(None) == "s3://cluster-wide/runs"
    assert storage.storage_base("gs://from-config/x") == "gs://from-config/x"
    monkeypatch.setenv("DDRAY_STORAGE", "")
    assert storage.storage_base(None) is None


def test_run_prefix_is_base_slash_run_id(tmp_path, monkeypatch):
    assert storage.run_prefix(None, "r1") is None
    assert storage.run_prefix("s3://bucket/runs/", "r1") == "s3://bucket/runs/r1"
    monkeypatch.chdir(tmp_path)
    assert storage.run_prefix("store", "r1") == str(tmp_path / "store" / "r1")  # local bases become absolute


# ------------------------------------------------------------------ the same behaviour on both backends


@pytest.fixture(params=["local", "file-uri", pytest.param("s3", marks=pytest.mark.cluster)])
def base(request, tmp_path):
    """An empty storage location: a local folder, a file:// URI, or a prefix in a moto bucket (env set in-process)."""
    if request.param == "local":
        yield str(tmp_path / "store")
        return
    if request.param == "file-uri":
        yield (tmp_path / "store").as_uri()
        return
    server = request.getfixturevalue("s3")
    server.create_bucket(BUCKET)
    with server.environ():
        yield f"s3://{BUCKET}/{request.node.name.replace('[', '-').rstrip(']')}"


def _tree(root: Path) -> dict[str, bytes]:
    """A small run folder, written a minute ago (stored copies are then newer, even at S3's 1 s resolution)."""
    files = {
        "results.json": b'{"ok": true}',
        "checkpoints/local/sub000.pt": os.urandom(3000),
        "checkpoints/dnn.pt": os.urandom(100),
        "tune/best_configs.json": b"{}",
        "local/sub000.npz": os.urandom(50),
    }
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
        os.utime(root / rel, (time.time() - 60, time.time() - 60))
    return files


def test_upload_list_read_download_round_trip(base, tmp_path):
    prefix = storage.join(base, "run-1")
    assert storage.list_files(prefix) == [] and storage.is_empty(prefix)
    files = _tree(tmp_path / "run")

    assert storage.upload_tree(tmp_path / "run", prefix) == len(files)
    assert storage.list_files(prefix) == sorted(files)
    assert not storage.is_empty(prefix)
    assert storage.exists(storage.join(prefix, "checkpoints/dnn.pt"))
    assert not storage.exists(storage.join(prefix, "checkpoints"))  # a folder is not a file
    assert not storage.exists(storage.join(prefix, "nothing.json"))
    assert storage.read_bytes(storage.join(prefix, "checkpoints/local/sub000.pt")) == files["checkpoints/local/sub000.pt"]

    assert storage.download_tree(prefix, tmp_path / "back" / "deep") == len(files)
    for rel, data in files.items():
        assert (tmp_path / "back" / "deep" / rel).read_bytes() == data

    # what is stored and unchanged is skipped; a changed file is copied again
    assert storage.upload_tree(tmp_path / "run", prefix) == 0
    (tmp_path / "run" / "results.json").write_bytes(b'{"ok": false, "more": 1}')
    assert storage.upload_tree(tmp_path / "run", prefix) == 1
    assert storage.read_bytes(storage.join(prefix, "results.json")) == b'{"ok": false, "more": 1}'
    # siblings never leak into a prefix's listing
    assert storage.list_files(storage.join(base, "run-")) == []


def test_write_bytes_and_missing_files(base, tmp_path):
    where = storage.join(base, "claim", "run.json")
    storage.write_bytes(where, b'{"run_id": "x"}')
    assert storage.exists(where) and storage.read_bytes(where) == b'{"run_id": "x"}'
    assert storage.list_files(storage.join(base, "claim")) == ["run.json"]
    with pytest.raises(FileNotFoundError):
        storage.read_bytes(storage.join(base, "claim", "absent.json"))
    assert storage.download_tree(storage.join(base, "absent"), tmp_path / "none") == 0
    assert (tmp_path / "none").is_dir() and not any((tmp_path / "none").iterdir())


# ------------------------------------------------------------------ data sets from a bucket


@pytest.mark.cluster
def test_local_copy_of_a_bucket_file_and_folder(s3, tmp_path):
    s3.create_bucket(BUCKET)
    client = s3.client()
    client.put_object(Bucket=BUCKET, Key="data/x.npz", Body=b"npz-bytes")
    client.put_object(Bucket=BUCKET, Key="data/imgs/cat/1.png", Body=b"c1")
    client.put_object(Bucket=BUCKET, Key="data/imgs/dog/2.png", Body=b"d2")
    with s3.environ():
        file = storage.local_copy(f"s3://{BUCKET}/data/x.npz", tmp_path / "a")
        folder = storage.local_copy(f"s3://{BUCKET}/data/imgs", tmp_path / "b")
        with pytest.raises(DataError, match=f"s3://{BUCKET}/data/missing.npz"):
            storage.local_copy(f"s3://{BUCKET}/data/missing.npz", tmp_path / "c")
        with pytest.raises(DataError, match="s3://no-such-bucket-ddray/x.npz"):
            storage.local_copy("s3://no-such-bucket-ddray/x.npz", tmp_path / "d")
    assert file.read_bytes() == b"npz-bytes" and file.name == "x.npz"
    assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()) == ["cat/1.png", "dog/2.png"]


@pytest.mark.cluster
def test_driver_loads_an_imagefolder_and_an_npz_from_a_bucket(s3, tmp_path):
    """The driver's data step on bucket URIs: a folder of class subfolders, and an npz; errors name the URI."""
    from PIL import Image

    from ddray.config import parse_config
    from ddray.orchestration.driver import load_data

    s3.create_bucket(BUCKET)
    client = s3.client()
    rng = np.random.default_rng(0)
    for cls in ("circle", "square"):
        for i in range(12):
            img = Image.fromarray(rng.integers(0, 255, size=(16, 16), dtype=np.uint8))
            path = tmp_path / f"{cls}{i}.png"
            img.save(path)
            client.upload_file(str(path), BUCKET, f"data/shapes/{cls}/{i:02d}.png")
    x = rng.normal(size=(40, 1, 8, 8)).astype(np.float32)
    np.savez(tmp_path / "x.npz", x=x, y=np.arange(40) % 2)
    client.upload_file(str(tmp_path / "x.npz"), BUCKET, "data/x.npz")
    client.put_object(Bucket=BUCKET, Key="data/broken.npz", Body=b"not an npz")

    def cfg(source, path):
        return parse_config({"dataset": {"source": source, "path": path}, "decomposition": {"grid": [2, 2]}})

    with s3.environ():
        images = load_data(cfg("imagefolder", f"s3://{BUCKET}/data/shapes"))
        arrays = load_data(cfg("npz", f"s3://{BUCKET}/data/x.npz"))
        with pytest.raises(DataError) as err:
            load_data(cfg("npz", f"s3://{BUCKET}/data/broken.npz"))
    assert images.num_classes == 2 and images.class_names == ["circle", "square"]
    assert sum(images.summary()[k] for k in ("train", "val", "test")) == 24
    assert list(images.spatial_shape) == [16, 16]
    assert sum(arrays.summary()[k] for k in ("train", "val", "test")) == 40
    assert f"s3://{BUCKET}/data/broken.npz" in str(err.value) and "ddray-data-" not in str(err.value)


def test_checkpoint_is_uploaded_only_after_epochs_that_wrote_one(tmp_path):
    """With training.checkpoint_every > 1 most epochs write nothing: nothing is copied up for them."""
    remote = f"file://{tmp_path}/bucket/run/state/sub000.ckpt"
    with storage.checkpoint_location(remote) as (local, sync):
        Path(local).write_bytes(b"epoch 1")
        sync.on_epoch_end(1, {}, None)
        assert storage.read_bytes(remote) == b"epoch 1"
        os.remove(tmp_path / "bucket" / "run" / "state" / "sub000.ckpt")
        sync.on_epoch_end(2, {}, None)  # the local file did not change: no upload
        assert not storage.exists(remote)
        time.sleep(0.01)
        Path(local).write_bytes(b"epoch 3")
        sync.on_epoch_end(3, {}, None)
        assert storage.read_bytes(remote) == b"epoch 3"
