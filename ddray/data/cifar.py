"""CIFAR-10 from its python-pickle batches, read by an unpickler that refuses code.

Pixels are uint8, scaled by the value rule (/ 255) like a PNG of them
(docs/preprocessing.md). Nothing is ever downloaded.
"""

from __future__ import annotations

import codecs
import pickle
from pathlib import Path
from typing import Sequence

import numpy as np

from ddray.config import DatasetConfig
from ddray.data.raw import RawData
from ddray.data.validation import DataError, check_label_range, check_labels, require_path, scale_values

CIFAR_FOLDER = "cifar-10-batches-py"
CIFAR_TRAIN = [f"data_batch_{i}" for i in range(1, 6)]
CIFAR_TEST = "test_batch"
CIFAR_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def _safe_globals() -> dict[tuple[str, str], object]:
    """The only callables a CIFAR pickle needs: numpy array reconstruction (any numpy
    version, pickle protocol 2..5) and _codecs.encode (Python-3 bytes in protocol 2)."""
    reconstruct = np.ndarray((0,)).__reduce__()[0]
    scalar = np.float64(0).__reduce__()[0]
    frombuffer = np.arange(2).__reduce_ex__(5)[0]
    allowed: dict[tuple[str, str], object] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): codecs.encode,
    }
    for core in ("numpy.core", "numpy._core"):
        allowed[(f"{core}.multiarray", "_reconstruct")] = reconstruct
        allowed[(f"{core}.multiarray", "scalar")] = scalar
        allowed[(f"{core}.numeric", "_frombuffer")] = frombuffer
    return allowed


class _CifarUnpickler(pickle.Unpickler):
    """Refuses every global except numpy arrays: a pickle can run arbitrary code,
    and dataset paths may come from REST requests."""

    _allowed = _safe_globals()

    def find_class(self, module: str, name: str):  # noqa: D401
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}") from None


def _read_cifar_pickle(path: Path) -> dict:
    try:
        with open(path, "rb") as fh:
            entry = _CifarUnpickler(fh, encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, OSError, ValueError, TypeError, AttributeError) as err:
        raise DataError(f"{path}: not a CIFAR-10 python pickle ({err}); re-extract cifar-10-python.tar.gz") from None
    if not isinstance(entry, dict):
        raise DataError(f"{path}: not a CIFAR-10 python pickle (holds {type(entry).__name__}, expected dict)")
    return {(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in entry.items()}


def _read_cifar_batch(path: Path, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    entry = _read_cifar_pickle(path)
    if "data" not in entry or "labels" not in entry:
        raise DataError(f"{path}: CIFAR-10 batch lacks 'data' or 'labels'; keys present: {sorted(map(str, entry))}")
    data = np.asarray(entry["data"])
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or data.dtype.kind not in "iu":
        raise DataError(
            f"{path}: CIFAR-10 'data' must be uint8 shaped (n, 3072); got {data.dtype} {tuple(data.shape)}"
        )
    origin = str(path)
    if data.dtype != np.uint8:  # CIFAR-10 pixels are 8-bit by definition, however the pickle stored them
        if data.size and (data.min() < 0 or data.max() > 255):
            raise DataError(f"{path}: CIFAR-10 'data' must hold 8-bit pixels 0..255; found values outside that range")
        data = data.astype(np.uint8)
    x = scale_values(data.reshape(-1, 3, 32, 32), origin=origin, name="data")  # uint8 / 255, like a PNG of it
    y = check_labels(np.asarray(entry["labels"]), origin=origin, n=len(x), name="labels", x_name="data")
    check_label_range(y, num_classes, origin=origin, name="labels")
    return x, y


def find_cifar_folder(path: Path) -> Path:
    for folder in (path / CIFAR_FOLDER, path):
        if all((folder / name).is_file() for name in CIFAR_TRAIN + [CIFAR_TEST]):
            return folder
    raise DataError(
        f"no CIFAR-10 python batches under {path}: expected {path}/{CIFAR_FOLDER}/data_batch_1..5 and "
        f"test_batch (download=False: ddray never downloads)"
    )


def load_cifar10(cfg: DatasetConfig, *, seed: int, grid: Sequence[int] | None) -> RawData:
    """The python-pickle CIFAR-10 folder (50000 train / 10000 test, 3x32x32).

    The pickles are read here (same format as torchvision.datasets.CIFAR10)
    rather than via torchvision, because torchvision checks the md5 of every
    batch file and rejects anything but the official files, e.g. the small
    fixtures of the tests; reading them ourselves also lets ``limit`` skip
    batches and refuses pickled code.
    """
    path = require_path(cfg.path)
    if not path.is_dir():
        raise DataError(f"{path}: source 'cifar10' needs the folder holding {CIFAR_FOLDER}, not a file")
    folder = find_cifar_folder(path)
    class_names = CIFAR_CLASSES
    meta_path = folder / "batches.meta"
    if meta_path.is_file():
        meta = _read_cifar_pickle(meta_path)
        names = meta.get("label_names")
        if names:
            class_names = [n.decode() if isinstance(n, bytes) else str(n) for n in names]
    num_classes = len(class_names)
    xs, ys, total = [], [], 0
    for name in CIFAR_TRAIN:
        if cfg.limit and total >= cfg.limit:
            break
        x, y = _read_cifar_batch(folder / name, num_classes)
        xs.append(x)
        ys.append(y)
        total += len(x)
    x_test, y_test = _read_cifar_batch(folder / CIFAR_TEST, num_classes)
    x, y = np.concatenate(xs), np.concatenate(ys)
    if cfg.limit:
        x, y = x[: cfg.limit], y[: cfg.limit]
        x_test, y_test = x_test[: cfg.limit], y_test[: cfg.limit]
    return RawData(
        x=np.ascontiguousarray(x),
        y=y,
        num_classes=num_classes,
        class_names=class_names,
        origin=str(folder),
        x_test=np.ascontiguousarray(x_test),
        y_test=y_test,
        values="uint8 / 255",
    )
