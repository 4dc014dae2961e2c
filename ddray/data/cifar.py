"""torchvision's CIFAR-10 / CIFAR-100 datasets, loaded by an unpickler that refuses code.

``torchvision.datasets.CIFAR10`` reads its batch files with ``pickle.load``, which
runs whatever a pickle asks for, and dataset roots may come from REST requests
(issue #10). :class:`SafeCIFAR10` and :class:`SafeCIFAR100` are torchvision's
classes (same layout, file lists, class names, ``data`` as (N, 32, 32, 3) uint8,
``targets``, ``classes``, ``__getitem__``) whose loading goes through
:class:`RestrictedUnpickler`, which admits numpy arrays and nothing else. They
skip torchvision's md5 check (which only the official files pass), so a
re-packed or shortened set loads too, and they can stop reading batches at a
sample ``limit``.

This module imports torchvision; ``ddray.data.vision`` imports it only when a
CIFAR source is loaded.
"""

from __future__ import annotations

import codecs
import os
import pickle
from pathlib import Path

import numpy as np
from torchvision.datasets import CIFAR10, CIFAR100
from torchvision.datasets.vision import VisionDataset

from ddray.data.validation import DataError


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


class RestrictedUnpickler(pickle.Unpickler):
    """Refuses every global except numpy arrays: a pickle can run arbitrary code."""

    _allowed = _safe_globals()

    def find_class(self, module: str, name: str):  # noqa: D401
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}") from None


def read_pickle(path: str | Path, what: str) -> dict:
    """A CIFAR pickle (a dict, keys as str) read by :class:`RestrictedUnpickler`; DataError otherwise."""
    try:
        with open(path, "rb") as fh:
            entry = RestrictedUnpickler(fh, encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, OSError, ValueError, TypeError, AttributeError, IndexError) as err:
        raise DataError(f"{path}: not a {what} python pickle ({err}); re-extract the downloaded archive") from None
    if not isinstance(entry, dict):
        raise DataError(f"{path}: not a {what} python pickle (holds {type(entry).__name__}, expected dict)")
    return {(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in entry.items()}


class SafeCIFAR10(CIFAR10):
    """torchvision's CIFAR10, read with :func:`read_pickle`; ``download`` is not offered."""

    what = "CIFAR-10"

    def __init__(self, root: str | Path, train: bool = True, limit: int | None = None) -> None:
        VisionDataset.__init__(self, root)
        self.train = train
        folder = os.path.join(self.root, self.base_folder)
        meta = read_pickle(os.path.join(folder, self.meta["filename"]), self.what)
        names = meta.get(self.meta["key"])
        if not isinstance(names, (list, tuple)) or not names:
            raise DataError(f"{folder}/{self.meta['filename']}: no '{self.meta['key']}' list of class names")
        self.classes = [n.decode() if isinstance(n, bytes) else str(n) for n in names]
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}
        data, targets, total = [], [], 0
        for file_name, _md5 in self.train_list if train else self.test_list:
            if limit and total >= limit:
                break
            x, y = self._read_batch(os.path.join(folder, file_name))
            data.append(x)
            targets.append(y)
            total += len(x)
        self.data = np.concatenate(data).reshape(-1, 3, 32, 32).transpose((0, 2, 3, 1))  # HWC, as torchvision
        self.targets = [int(t) for t in np.concatenate(targets)]

    def _read_batch(self, path: str) -> tuple[np.ndarray, np.ndarray]:
        entry = read_pickle(path, self.what)
        labels_key = "labels" if "labels" in entry else "fine_labels"  # CIFAR-100: the 100 fine classes
        if "data" not in entry or labels_key not in entry:
            raise DataError(
                f"{path}: {self.what} batch lacks 'data' or '{labels_key}'; keys present: {sorted(map(str, entry))}"
            )
        data = np.asarray(entry["data"])
        if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or data.dtype.kind not in "iu":
            raise DataError(f"{path}: {self.what} 'data' must be uint8 shaped (n, 3072); got {data.dtype} {tuple(data.shape)}")
        if data.dtype != np.uint8:  # CIFAR pixels are 8-bit by definition, however the pickle stored them
            if data.size and (data.min() < 0 or data.max() > 255):
                raise DataError(f"{path}: {self.what} 'data' must hold 8-bit pixels 0..255; found values outside that range")
            data = data.astype(np.uint8)
        labels = np.asarray(entry[labels_key])
        if labels.dtype.kind not in "iu" or labels.shape != (len(data),):
            raise DataError(
                f"{path}: '{labels_key}' must be {len(data)} integer class ids (one per row of 'data'); "
                f"got {labels.dtype} {tuple(labels.shape)}"
            )
        bad = labels[(labels < 0) | (labels >= len(self.classes))]
        if bad.size:
            raise DataError(f"{path}: labels must be integers in [0, {len(self.classes)}); found {int(bad[0])} in '{labels_key}'")
        return data, labels.astype(np.int64)


class SafeCIFAR100(SafeCIFAR10, CIFAR100):
    """torchvision's CIFAR100 (its folder, files and fine labels), read like :class:`SafeCIFAR10`."""

    what = "CIFAR-100"
