"""Sources read with ``torchvision.datasets``: mnist, fashion_mnist, kmnist (IDX files), cifar10, cifar100.

Each is torchvision's own dataset class with ``download=False`` on torchvision's
layout under ``dataset.root`` (docs/data.md); ``catalog.locate`` first checks
that every file is there and otherwise names them and where to get them.
CIFAR goes through ``cifar.SafeCIFAR10`` / ``SafeCIFAR100``, torchvision's classes
with a loader that never unpickles code. Pixels are uint8 and scaled by the
value rule (/ 255), like a PNG of them. torchvision is imported only here, when
such a source is loaded.
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np

from ddray.config import DatasetConfig
from ddray.data.catalog import SETS, locate
from ddray.data.raw import RawData
from ddray.data.validation import DataError, check_labels, scale_values


def _idx_split(source: str, root: str, train: bool, origin: str) -> tuple[np.ndarray, np.ndarray]:
    import torchvision.datasets as tvd

    cls = getattr(tvd, SETS[source].torchvision_class)
    try:
        ds = cls(root, train=train, download=False)
    except (RuntimeError, AssertionError, TypeError, ValueError, OSError) as err:
        if "Dataset not found" in str(err):  # locate() found the files, and now they are gone:
            locate(source, root)  # the same message, naming what is missing and where to get it
        split = "train" if train else "t10k"
        raise DataError(
            f"{origin}/{split}-images-idx3-ubyte or {split}-labels-idx1-ubyte: not a valid IDX file "
            f"({str(err) or 'bad header'}); re-extract it from the downloaded .gz"
        ) from None
    x = scale_values(ds.data.numpy()[:, None], origin=origin, name="images")  # uint8 / 255
    y = check_labels(ds.targets.numpy(), origin=origin, n=len(x), name="labels", x_name="images")
    return x, y


def load_idx(cfg: DatasetConfig, *, seed: int, grid: Sequence[int] | None) -> RawData:
    """MNIST, Fashion-MNIST or KMNIST (60000 train / 10000 test, 1x28x28) via torchvision."""
    spec = SETS[cfg.source]
    root = locate(cfg.source, cfg.path)
    origin = os.path.join(root, spec.folder)
    x, y = _idx_split(cfg.source, str(root), True, origin)
    x_test, y_test = _idx_split(cfg.source, str(root), False, origin)
    return _raw(x, y, x_test, y_test, _classes(spec.torchvision_class), origin)


def _classes(torchvision_class: str) -> list[str]:
    import torchvision.datasets as tvd

    return list(getattr(tvd, torchvision_class).classes)


def load_cifar(cfg: DatasetConfig, *, seed: int, grid: Sequence[int] | None) -> RawData:
    """CIFAR-10 (10 classes) or CIFAR-100 (100 fine classes): 50000 train / 10000 test, 3x32x32."""
    from ddray.data.cifar import SafeCIFAR10, SafeCIFAR100

    spec = SETS[cfg.source]
    root = locate(cfg.source, cfg.path)
    cls = SafeCIFAR10 if cfg.source == "cifar10" else SafeCIFAR100
    origin = os.path.join(root, spec.folder)
    train, test = cls(root, train=True, limit=cfg.limit), cls(root, train=False, limit=cfg.limit)

    def arrays(ds) -> tuple[np.ndarray, np.ndarray]:
        x = scale_values(ds.data.transpose((0, 3, 1, 2)), origin=origin, name="data")  # HWC -> CHW, uint8 / 255
        return x, np.asarray(ds.targets, dtype=np.int64)

    return _raw(*arrays(train), *arrays(test), list(train.classes), origin)


def _raw(x, y, x_test, y_test, classes: list[str], origin: str) -> RawData:
    for name, labels in (("train", y), ("test", y_test)):
        if labels.size and labels.max() >= len(classes):
            raise DataError(f"{origin}: {name} labels must be in [0, {len(classes)}); found {int(labels.max())}")
    return RawData(
        x=np.ascontiguousarray(x),
        y=y,
        num_classes=len(classes),
        class_names=[str(c) for c in classes],
        origin=origin,
        x_test=np.ascontiguousarray(x_test),
        y_test=y_test,
        values="uint8 / 255",
    )
