"""One loader per ``dataset.source``; each returns validated raw arrays (docs/data.md).

Here: digits, npz, synthetic, and the registry ``SOURCES``. torchvision's sets
(mnist, fashion_mnist, kmnist, cifar10, cifar100) are in ``vision``, the
class-per-folder sources (imagefolder, volumefolder) in ``folders``.

Raw means: float32 (N, C, *spatial) on the value scale of the preprocessing
contract (docs/preprocessing.md), not yet resized or normalised. Every stored
array goes through ``validation.scale_values``: bool and integers of up to 16
bits are divided by their dtype's maximum (uint8 / 255, uint16 / 65535), floats
and wider integers are used as stored. npz arrays, MNIST / CIFAR pixels, image
and volume files (decoded by Pillow to uint8, or uint16 for 16-bit grayscale) all follow
it, so the same 8-bit image is the same array whichever format carried it.
digits (sklearn's 0..16 values) are divided by 16. Nothing is ever downloaded.
"""

from __future__ import annotations

import math
import zipfile
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ddray.config import DatasetConfig
from ddray.data.folders import load_imagefolder, load_volumefolder
from ddray.data.raw import RawData
from ddray.data.synthetic import generate_blobs, generate_count
from ddray.data.validation import (
    DataError,
    check_label_range,
    check_labels,
    check_same_layout,
    describe_values,
    require_path,
    scale_values,
    value_divisor,
)
from ddray.data.vision import load_cifar, load_idx

# ---------------------------------------------------------------------- digits


def load_digits(cfg: DatasetConfig, *, seed: int, grid: Sequence[int] | None) -> RawData:
    """sklearn's bundled 8x8 handwritten digits (1797 samples, values 0..16), scaled to [0, 1];
    upsampled to dataset.image_size or 32x32 by ``load_dataset``.

    Read from scikit-learn's own file the way its ``load_digits`` reads it (the same array), without
    importing scikit-learn: that import costs more than a second of CPU while Ray starts."""
    table = _bundled_digits()
    x = (table[:, :-1].reshape(-1, 8, 8).astype(np.float32) / 16.0)[:, None]
    y = table[:, -1].astype(np.int64)
    if cfg.limit:
        x, y = x[: cfg.limit], y[: cfg.limit]
    return RawData(
        x=np.ascontiguousarray(x),
        y=y,
        num_classes=10,
        class_names=[str(i) for i in range(10)],
        origin="digits (sklearn)",
        default_resize=[32, 32],
        values="digits 0..16 / 16",
    )


def _bundled_digits() -> np.ndarray:
    """scikit-learn's ``datasets/data/digits.csv.gz``: 64 pixel columns and the label, one row per image."""
    import gzip
    from importlib.util import find_spec

    spec = find_spec("sklearn")  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise DataError("dataset.source 'digits' needs scikit-learn (pip install scikit-learn)")
    path = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data" / "digits.csv.gz"
    with gzip.open(path, mode="rt", encoding="utf-8") as text:
        return np.loadtxt(text, delimiter=",")


# ------------------------------------------------------------------------- npz


def _npz_array(f, name: str, origin: str) -> np.ndarray:
    try:
        return f[name]
    except ValueError as err:  # object arrays need pickle, which ddray never enables
        raise DataError(
            f"{origin}: array '{name}' cannot be read without pickle ({err}); store plain numeric "
            f"arrays (object arrays, e.g. ragged images, are not supported)"
        ) from None


def load_npz(cfg: DatasetConfig, *, seed: int, grid: Sequence[int] | None) -> RawData:
    path = require_path(cfg.path)
    origin = str(path)
    if path.is_dir():
        raise DataError(
            f"{origin}: is a folder; source 'npz' needs a .npz file (for a folder of class subfolders use "
            f"source: imagefolder or volumefolder)"
        )
    try:
        f = np.load(path, allow_pickle=False)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as err:
        raise DataError(
            f"{origin}: not a readable .npz file ({err}); save with numpy.savez(path, x=images, y=labels)"
        ) from None
    if not isinstance(f, np.lib.npyio.NpzFile):
        raise DataError(
            f"{origin}: holds a single array, not an .npz archive; save with numpy.savez(path, x=images, y=labels)"
        )
    with f:
        present = list(f.files)
        for needed in ("x", "y"):
            if needed not in present:
                raise DataError(
                    f"missing array '{needed}' in {origin}; arrays present: {', '.join(present) or '(none)'}; "
                    f"save with numpy.savez(path, x=images, y=labels)"
                )
        if ("x_test" in present) != ("y_test" in present):
            have, lack = ("x_test", "y_test") if "x_test" in present else ("y_test", "x_test")
            raise DataError(f"missing array '{lack}' in {origin}: '{have}' is present; give both or neither")
        x_raw, y_raw = _npz_array(f, "x", origin), _npz_array(f, "y", origin)
        has_test = "x_test" in present
        xt_raw = _npz_array(f, "x_test", origin) if has_test else None
        yt_raw = _npz_array(f, "y_test", origin) if has_test else None
        names_raw = _npz_array(f, "class_names", origin) if "class_names" in present else None

    # labels first (cheap): num_classes comes from all labels, before any limit
    x_shape_n = x_raw.shape[0] if x_raw.ndim else 0
    x = scale_values(x_raw[: cfg.limit] if cfg.limit and x_raw.ndim else x_raw, origin=origin, name="x")
    y = check_labels(y_raw, origin=origin, n=x_shape_n, name="y")
    x_test = y_test = None
    if has_test:
        if value_divisor(xt_raw.dtype) != value_divisor(x_raw.dtype):
            raise DataError(
                f"{origin}: 'x' is {x_raw.dtype} ({describe_values(x_raw.dtype)}) but 'x_test' is {xt_raw.dtype} "
                f"({describe_values(xt_raw.dtype)}), so they would reach the model on different scales; store both "
                f"with the same dtype (see docs/preprocessing.md)"
            )
        x_test = scale_values(xt_raw[: cfg.limit] if cfg.limit and xt_raw.ndim else xt_raw, origin=origin, name="x_test")
        y_test = check_labels(yt_raw, origin=origin, n=xt_raw.shape[0], name="y_test", x_name="x_test")
        check_same_layout(x_test, x, origin=origin, name="x_test")

    labels_max = int(max(y.max(), y_test.max() if y_test is not None else 0))
    if names_raw is not None:
        if names_raw.ndim != 1 or names_raw.dtype.kind not in "USiu":
            raise DataError(
                f"{origin}: 'class_names' must be a 1-D array of strings; got dtype {names_raw.dtype} "
                f"shape {tuple(names_raw.shape)}"
            )
        class_names = [n.decode() if isinstance(n, bytes) else str(n) for n in names_raw.tolist()]
        num_classes = len(class_names)
        why = f" ('class_names' lists {num_classes} classes)"
    else:
        num_classes = labels_max + 1
        class_names = [str(i) for i in range(num_classes)]
        why = ""
    check_label_range(y, num_classes, origin=origin, name="y", why=why)
    if y_test is not None:
        check_label_range(y_test, num_classes, origin=origin, name="y_test", why=why)
    if num_classes < 2:
        raise DataError(f"{origin}: all labels are {labels_max}; classification needs at least 2 classes")
    if cfg.limit:
        y = y[: cfg.limit]
        y_test = y_test[: cfg.limit] if y_test is not None else None
    return RawData(
        x=x, y=y, num_classes=num_classes, class_names=class_names, origin=origin, x_test=x_test, y_test=y_test,
        values=describe_values(x_raw.dtype),
    )


# ------------------------------------------------------------------- synthetic


def load_synthetic(cfg: DatasetConfig, *, seed: int, grid: Sequence[int] | None) -> RawData:
    size = list(cfg.size)
    if cfg.kind == "count":
        if cfg.cells is not None:
            cells = list(cfg.cells)
        elif grid is not None and len(grid) == len(size):
            cells = list(grid)
        else:
            cells = [2] * len(size)
        x, y = generate_count(size, cells, cfg.samples, cfg.channels, seed)
        num_classes = math.prod(cells) + 1
        origin = f"synthetic 'count' data {size} with cells {cells}"
    else:
        x, y = generate_blobs(size, cfg.classes, cfg.samples, cfg.channels, seed)
        num_classes = cfg.classes
        origin = f"synthetic 'blobs' data {size}"
    if cfg.limit:
        x, y = x[: cfg.limit], y[: cfg.limit]
    return RawData(x=x, y=y, num_classes=num_classes, class_names=[str(i) for i in range(num_classes)], origin=origin)


SOURCES: dict[str, Callable[..., RawData]] = {
    "digits": load_digits,
    "npz": load_npz,
    "synthetic": load_synthetic,
    "mnist": load_idx,
    "fashion_mnist": load_idx,
    "kmnist": load_idx,
    "cifar10": load_cifar,
    "cifar100": load_cifar,
    "imagefolder": load_imagefolder,
    "volumefolder": load_volumefolder,
}
