"""Sources read through torchvision and nibabel, on tiny files in the real on-disk formats written here:
IDX (MNIST family), CIFAR python-pickle batches, class folders of PNGs, .npy and NIfTI volumes. No Ray."""

from __future__ import annotations

import gzip
import os
import pickle
import struct
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from ddray.config import ConfigError, DatasetConfig, parse_config
from ddray.data import DataError, Preprocessing, load_dataset, read_predict_inputs
from ddray.data.catalog import SETS
from ddray.data.size import check_dataset_size, dataset_bytes

pytestmark = pytest.mark.filterwarnings("ignore:.*split is not stratified:RuntimeWarning")

IDX_CLASSES = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST", "kmnist": "KMNIST"}


def write_idx(path: Path, array: np.ndarray, compress: bool = False) -> None:
    """An IDX file as LeCun's: magic (0, 0, 0x08 = uint8, ndim), big-endian sizes, the bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = struct.pack(">BBBB", 0, 0, 8, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    data += np.ascontiguousarray(array, dtype=np.uint8).tobytes()
    (gzip.open if compress else open)(path, "wb").write(data)


def write_idx_set(root: Path, cls: str, n_train=30, n_test=10, compress=False) -> np.ndarray:
    rng = np.random.default_rng(0)
    train = rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8)
    for split, images in (("train", train), ("t10k", rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8))):
        suffix = ".gz" if compress else ""
        write_idx(root / cls / "raw" / f"{split}-images-idx3-ubyte{suffix}", images, compress)
        write_idx(root / cls / "raw" / f"{split}-labels-idx1-ubyte{suffix}", np.arange(len(images)) % 10, compress)
    return train


def write_cifar(root: Path, source="cifar10", n=10, protocol=pickle.HIGHEST_PROTOCOL) -> Path:
    """Batches as the official tarball holds them: pickled dicts of bytes keys, uint8 'data' (n, 3072)."""
    spec = SETS[source]
    folder = root / spec.folder
    folder.mkdir(parents=True)
    classes = 10 if source == "cifar10" else 100
    label_key = b"labels" if source == "cifar10" else b"fine_labels"
    rng = np.random.default_rng(0)
    for k, name in enumerate(spec.train + spec.test):
        entry = {
            b"batch_label": name.encode(),
            label_key: [int(v) for v in (np.arange(n) + k) % classes],
            b"data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8),
            b"filenames": [f"{i}.png".encode() for i in range(n)],
        }
        if source == "cifar100":
            entry[b"coarse_labels"] = [0] * n
        with open(folder / name, "wb") as fh:
            pickle.dump(entry, fh, protocol=protocol)
    key = b"label_names" if source == "cifar10" else b"fine_label_names"
    with open(folder / spec.meta[0], "wb") as fh:
        pickle.dump({key: [f"class{i}".encode() for i in range(classes)]}, fh, protocol=protocol)
    return folder


def write_volume(path: Path, volume: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".npy":
        np.save(path, volume)
    else:  # NIfTI: (i, j, k) or (i, j, k, c)
        nib.save(nib.Nifti1Image(volume, np.eye(4)), str(path))


# ------------------------------------------------------------------ the catalog is torchvision's


def test_catalog_matches_torchvision():
    import torchvision.datasets as tvd

    for source, spec in SETS.items():
        cls = getattr(tvd, spec.torchvision_class)
        if source in IDX_CLASSES:
            assert spec.folder == f"{cls.__name__}/raw" and spec.url in cls.mirrors
            assert spec.files == tuple(name.removesuffix(".gz") for name, _ in cls.resources)
        else:
            assert spec.folder == cls.base_folder and spec.url == cls.url
            assert spec.train == tuple(n for n, _ in cls.train_list) and spec.test == tuple(n for n, _ in cls.test_list)
            assert spec.meta == (cls.meta["filename"],)


def test_root_and_path_are_one_setting():
    assert DatasetConfig(source="mnist", root="/data").path == "/data"
    assert parse_config({"dataset": {"source": "npz", "path": "/d/x.npz"}}).dataset.path == "/d/x.npz"
    assert parse_config({"dataset": {"source": "cifar10", "root": "/d"}}).model_dump()["dataset"]["path"] == "/d"
    with pytest.raises(ConfigError, match="dataset.root and dataset.path are one setting; give only one"):
        parse_config({"dataset": {"source": "mnist", "root": "/a", "path": "/b"}})
    with pytest.raises(ConfigError, match="dataset.root is required for source 'volumefolder'"):
        parse_config({"dataset": {"source": "volumefolder"}})


def test_the_service_confines_root_like_path(tmp_path):
    """root is stored as path, so the REST service's data-root check (which reads path) sees it."""
    from api.security import PathNotAllowed, confine_config_paths

    (tmp_path / "data").mkdir()
    (tmp_path / "elsewhere").mkdir()
    config = parse_config({"dataset": {"source": "cifar10", "root": str(tmp_path / "elsewhere")}}).model_dump(mode="json")
    with pytest.raises(PathNotAllowed):
        confine_config_paths(config, [str(tmp_path / "data")], [])


# ------------------------------------------------------------------ MNIST family (IDX)


@pytest.mark.parametrize("source", sorted(IDX_CLASSES))
def test_idx_sets_read_by_torchvision(tmp_path, source):
    import torchvision.datasets as tvd

    cls = IDX_CLASSES[source]
    train = write_idx_set(tmp_path, cls)
    for root in (tmp_path, tmp_path / cls, tmp_path / cls / "raw"):  # torchvision's root, or the set's folder
        ds = load_dataset(DatasetConfig(source=source, root=str(root)), seed=0, grid=[2, 2])
        assert ds.x_train.shape[1:] == (1, 28, 28) and ds.num_classes == 10
        assert len(ds.y_test) == 10 and len(ds.y_train) + len(ds.y_val) == 30  # t10k is the test split
        assert ds.class_names == list(getattr(tvd, cls).classes)
        assert ds.preprocessing.source_values == "uint8 / 255"
    # each training image is a stored one / 255, normalised: what predicting that image gives
    wanted = {row.tobytes() for row in ds.preprocessing.apply(train[:, None])}
    assert all(row.tobytes() in wanted for row in ds.x_train)
    assert dataset_bytes(DatasetConfig(source=source, root=str(tmp_path))) == 40 * 28 * 28 * 4  # from IDX headers


def test_idx_missing_files_are_named_before_loading(tmp_path):
    write_idx_set(tmp_path, "MNIST")
    os.remove(tmp_path / "MNIST" / "raw" / "t10k-labels-idx1-ubyte")
    cfg = DatasetConfig(source="mnist", root=str(tmp_path))
    expected = rf"1 of its files are missing: expected {tmp_path}/MNIST/raw/t10k-labels-idx1-ubyte;.*never downloads.*https://ossci-datasets.s3.amazonaws.com/mnist/.*gunzip"
    with pytest.raises(DataError, match=expected):
        check_dataset_size(cfg, 2**40)  # the driver's check before Ray starts
    with pytest.raises(DataError, match=expected):
        load_dataset(cfg, seed=0)
    with pytest.raises(DataError, match=r"none of its files is there: expected .*FashionMNIST/raw/train-images-idx3-ubyte, "
                       r".*t10k-labels-idx1-ubyte;.*fashion-mnist"):
        check_dataset_size(DatasetConfig(source="fashion_mnist", root=str(tmp_path)), 2**40)
    gz = tmp_path / "gz"
    write_idx_set(gz, "KMNIST", compress=True)
    with pytest.raises(DataError, match=r"found train-images-idx3-ubyte.gz, .*: decompress them there \(gunzip -k\)"):
        load_dataset(DatasetConfig(source="kmnist", root=str(gz)), seed=0)
    with pytest.raises(DataError, match=r"dataset root not found: .*nowhere \(dataset.root\)"):
        check_dataset_size(DatasetConfig(source="kmnist", root=str(tmp_path / "nowhere")), 2**40)


def test_the_driver_checks_the_files_before_ray_starts(tmp_path):
    from ddray.orchestration.driver import check_data  # imports Ray's module, starts nothing

    with pytest.raises(DataError, match=r"dataset path not found: .*absent \(dataset.root\)"):
        check_data(parse_config({"dataset": {"source": "kmnist", "root": str(tmp_path / "absent")}}))
    with pytest.raises(DataError, match=r"none of its files is there: expected .*KMNIST/raw/train-images-idx3-ubyte"):
        check_data(parse_config({"dataset": {"source": "kmnist", "root": str(tmp_path)}}))


def test_idx_corrupt_file_is_named(tmp_path):
    write_idx_set(tmp_path, "MNIST")
    (tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte").write_bytes(b"\0\0\x08\x03" + b"\0\0\0\x05")
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte.*(not a valid IDX|not an IDX|truncated)"):
        load_dataset(DatasetConfig(source="mnist", root=str(tmp_path)), seed=0)


# ------------------------------------------------------------------ CIFAR


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
@pytest.mark.parametrize("source", ["cifar10", "cifar100"])
def test_cifar_batches(tmp_path, source, protocol):
    folder = write_cifar(tmp_path, source, n=10, protocol=protocol)
    classes = 10 if source == "cifar10" else 100
    batches = len(SETS[source].train)
    for root in (tmp_path, folder):  # torchvision's root or the batches folder itself
        ds = load_dataset(DatasetConfig(source=source, root=str(root)), seed=0, grid=[2, 2])
        assert ds.x_train.shape[1:] == (3, 32, 32) and ds.num_classes == classes
        assert len(ds.y_test) == 10 and len(ds.y_train) + len(ds.y_val) == 10 * batches
        assert ds.class_names[:2] == ["class0", "class1"] and ds.preprocessing.source_values == "uint8 / 255"
    ds = load_dataset(DatasetConfig(source=source, root=str(tmp_path), limit=15), seed=0)
    assert len(ds.y_train) + len(ds.y_val) == min(15, 10 * batches) and len(ds.y_test) == 10


def test_cifar_pixels_are_torchvision_layout(tmp_path):
    """The safe class is torchvision's: same HWC data, targets and classes as CIFAR10 itself would give."""
    from ddray.data.cifar import SafeCIFAR10

    folder = write_cifar(tmp_path, "cifar10", n=4)
    ds = SafeCIFAR10(tmp_path, train=False)
    with open(folder / "test_batch", "rb") as fh:
        entry = pickle.load(fh, encoding="latin1")  # our own file: safe to unpickle here
    np.testing.assert_array_equal(ds.data, entry[b"data"].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
    assert ds.targets == entry[b"labels"] and len(ds) == 4
    image, label = ds[0]  # torchvision's __getitem__: a PIL image
    assert image.size == (32, 32) and label == entry[b"labels"][0]


@pytest.mark.parametrize("name", ["data_batch_3", "batches.meta"])
def test_cifar_malicious_pickle_is_refused_without_running_it(tmp_path, name):
    folder = write_cifar(tmp_path, "cifar10")
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    with open(folder / name, "wb") as fh:
        pickle.dump({b"data": Evil(), b"labels": [], b"label_names": Evil()}, fh)
    cfg = DatasetConfig(source="cifar10", root=str(tmp_path))
    check_dataset_size(cfg, 2**40)  # the checks before Ray starts open no pickle
    with pytest.raises(DataError, match=rf"{name}: not a CIFAR-10 python pickle \(refusing to load (posix|os)\.system\)"):
        load_dataset(cfg, seed=0)
    assert not marker.exists()


def test_cifar_missing_files_name_them_and_the_url(tmp_path):
    folder = write_cifar(tmp_path, "cifar100")
    os.remove(folder / "meta")
    with pytest.raises(DataError, match=rf"1 of its files are missing: expected {folder}/meta; .*cifar-100-python.tar.gz"):
        check_dataset_size(DatasetConfig(source="cifar100", root=str(tmp_path)), 2**40)
    with pytest.raises(DataError, match=r"none of its files is there: expected .*cifar-10-batches-py/data_batch_1, .*test_batch"):
        load_dataset(DatasetConfig(source="cifar10", root=str(tmp_path)), seed=0)


# ------------------------------------------------------------------ image folders (DatasetFolder)


def test_imagefolder_skips_hidden_entries_and_does_not_follow_folder_links(tmp_path):
    root = tmp_path / "imgs"
    for cls in ("cat", "dog"):
        for i in range(5):
            path = root / cls / f"{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.full((8, 8), 40 * i, np.uint8), mode="L").save(path)
    (root / ".ipynb_checkpoints").mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8), mode="L").save(root / "cat" / ".hidden.png")
    (root / "dog" / "loop").symlink_to(root, target_is_directory=True)  # torchvision's os.walk would loop
    ds = load_dataset(DatasetConfig(source="imagefolder", root=str(root)), seed=0)
    assert ds.class_names == ["cat", "dog"] and ds.x_train.shape[1:] == (1, 8, 8)
    assert len(ds.y_train) + len(ds.y_val) + len(ds.y_test) == 10


# ------------------------------------------------------------------ volumes (.npy, NIfTI)


def volume_tree(root: Path, shape=(8, 8, 8), per_class=6, dtype=np.uint8) -> dict[str, np.ndarray]:
    """Per-class folders alternating .npy and .nii.gz files; returns the stored arrays by relative path."""
    rng = np.random.default_rng(1)
    stored = {}
    for cls in ("healthy", "tumour"):
        for i in range(per_class):
            v = rng.integers(0, 200, size=shape).astype(dtype)
            rel = f"{cls}/case{i}.{'npy' if i % 2 else 'nii.gz'}"
            write_volume(root / rel, v)
            stored[rel] = v
    return stored


def test_volumefolder_npy_and_nifti(tmp_path):
    stored = volume_tree(tmp_path / "vols")
    ds = load_dataset(DatasetConfig(source="volumefolder", root=str(tmp_path / "vols")), seed=0, grid=[2, 2, 2])
    assert ds.x_train.shape[1:] == (1, 8, 8, 8) and ds.spatial_dims == 3
    assert ds.class_names == ["healthy", "tumour"] and ds.num_classes == 2
    assert len(ds.y_train) + len(ds.y_val) + len(ds.y_test) == 12
    assert ds.preprocessing.source_values == "volume files: uint8 / 255"
    assert dataset_bytes(DatasetConfig(source="volumefolder", root=str(tmp_path / "vols"))) == 12 * 8 * 8 * 8 * 4
    # each training volume is a stored file / 255, normalised: .npy and NIfTI alike, axes as stored
    prep = ds.preprocessing
    wanted = {prep.apply(v[None, None]).tobytes() for v in stored.values()}
    assert all(row[None].tobytes() in wanted for row in ds.x_train)
    # predict reads the same files the same way (the preprocessing contract)
    x, names = read_predict_inputs(tmp_path / "vols" / "tumour", prep)
    assert names == [f"case{i}.{'npy' if i % 2 else 'nii.gz'}" for i in range(6)]
    for name, got in zip(names, prep.apply(x)):
        assert got.tobytes() == prep.apply(stored[f"tumour/{name}"][None, None])[0].tobytes()


def test_volumefolder_channels_and_train_test_layout(tmp_path):
    rng = np.random.default_rng(0)
    for split, n in (("train", 4), ("test", 2)):
        for cls in ("a", "b"):
            for i in range(n):
                write_volume(tmp_path / split / cls / f"{i}.nii", rng.random((8, 8, 8, 2)).astype(np.float32))  # (i, j, k, c)
                write_volume(tmp_path / split / cls / f"{i}.npy", rng.random((2, 8, 8, 8)).astype(np.float32))  # (c, d, h, w)
    ds = load_dataset(DatasetConfig(source="volumefolder", root=str(tmp_path)), seed=0)
    assert ds.x_train.shape[1:] == (2, 8, 8, 8) and len(ds.y_test) == 8 and len(ds.y_train) + len(ds.y_val) == 16


def test_volumefolder_errors_name_the_file_and_the_fix(tmp_path, monkeypatch):
    root = tmp_path / "vols"
    volume_tree(root, per_class=3)
    odd = root / "tumour" / "odd.nii.gz"
    write_volume(odd, np.zeros((8, 8, 9), np.uint8))
    with pytest.raises(DataError, match=rf"{odd}: volume is 8x8x9 with 1 channel but .* is 8x8x8 with 1 channel;.*resample, crop or pad"):
        load_dataset(DatasetConfig(source="volumefolder", root=str(root)), seed=0)
    write_volume(odd, np.zeros((8, 8, 8), np.float32))
    with pytest.raises(DataError, match=r"odd.nii.gz: stored as float32 but .* as uint8.*different scales"):
        load_dataset(DatasetConfig(source="volumefolder", root=str(root)), seed=0)
    odd.unlink()
    np.save(root / "tumour" / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(DataError, match=r"objects.npy: holds Python objects.*never unpickles"):
        load_dataset(DatasetConfig(source="volumefolder", root=str(root)), seed=0)
    (root / "tumour" / "objects.npy").unlink()
    (root / "tumour" / "broken.nii").write_bytes(b"not a nifti file at all")
    with pytest.raises(DataError, match=r"broken.nii: not a readable NIfTI file"):
        load_dataset(DatasetConfig(source="volumefolder", root=str(root)), seed=0)
    (root / "tumour" / "broken.nii").unlink()
    with pytest.raises(DataError, match="does not resize volumes: remove dataset.image_size"):
        load_dataset(DatasetConfig(source="volumefolder", root=str(root), image_size=[4, 4]), seed=0)
    monkeypatch.setenv("DDRAY_MAX_IMAGE_PIXELS", "100")
    with pytest.raises(DataError, match=r"512 voxels .* above the limit 100 \(set DDRAY_MAX_IMAGE_PIXELS"):
        load_dataset(DatasetConfig(source="volumefolder", root=str(root)), seed=0)



def test_volume_header_bomb_is_refused_before_reading(tmp_path):
    """A 400-byte .nii whose header claims 4096^3 voxels: refused from the header, nothing allocated."""
    header = nib.Nifti1Header()
    header.set_data_dtype(np.uint8)
    header.set_data_shape((4096, 4096, 4096))
    bomb = tmp_path / "vols" / "a" / "bomb.nii"
    bomb.parent.mkdir(parents=True)
    bomb.write_bytes(header.binaryblock + b"\0" * 4 + b"\1" * 40)
    write_volume(tmp_path / "vols" / "b" / "ok.npy", np.zeros((8, 8, 8), np.uint8))
    with pytest.raises(DataError, match=r"bomb.nii: 68719476736 voxels .* above the limit"):
        load_dataset(DatasetConfig(source="volumefolder", root=str(tmp_path / "vols")), seed=0)
    model = Preprocessing(channels=1, spatial_shape=(8, 8, 8), mean=[0.0], std=[1.0])
    with pytest.raises(DataError, match=r"bomb.nii: 68719476736 voxels"):  # predict refuses it the same way
        read_predict_inputs(bomb, model)
