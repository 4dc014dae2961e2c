"""The in-memory Dataset, its preprocessing record, splitting, and predict inputs.

``load_dataset`` = source loader (validated raw arrays) -> ``dataset.limit``
-> resize (``dataset.image_size``, 2D only) -> grid-fit check -> seeded
stratified splits -> per-channel mean/std on the TRAIN split -> normalise.
The :class:`Preprocessing` record stores exactly what was done so that
``ddray predict`` can repeat it on new inputs (``load_predict_inputs``).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ddray.config import DatasetConfig
from ddray.data.validation import (
    DataError,
    check_grid_fit,
    check_image_size,
    check_images,
    require_path,
)

_STATS_CHUNK = 4096  # samples per chunk when computing channel statistics / resizing


# ------------------------------------------------------------------ helpers


def resize_images(x: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """Bilinear resize of (N, C, H, W) float32 to ``size`` (H, W), antialiased when shrinking."""
    import torch
    import torch.nn.functional as F

    size = tuple(int(s) for s in size)
    if x.ndim != 4:
        raise DataError(f"only 2D images (N, C, H, W) can be resized; got shape {tuple(x.shape)}")
    if tuple(x.shape[2:]) == size:
        return np.ascontiguousarray(x, dtype=np.float32)
    shrink = size[0] < x.shape[2] or size[1] < x.shape[3]
    out = np.empty((x.shape[0], x.shape[1], *size), dtype=np.float32)
    for start in range(0, len(x), _STATS_CHUNK):
        chunk = torch.from_numpy(np.ascontiguousarray(x[start : start + _STATS_CHUNK], dtype=np.float32))
        resized = F.interpolate(chunk, size=size, mode="bilinear", align_corners=False, antialias=shrink)
        out[start : start + len(chunk)] = resized.numpy()
    return out


def channel_stats(x: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-channel mean and standard deviation (float64 accumulation, chunked)."""
    c = x.shape[1]
    axes = (0,) + tuple(range(2, x.ndim))
    total = np.zeros(c)
    total_sq = np.zeros(c)
    for start in range(0, len(x), _STATS_CHUNK):
        chunk = x[start : start + _STATS_CHUNK].astype(np.float64)
        total += chunk.sum(axis=axes)
        total_sq += np.square(chunk).sum(axis=axes)
    count = x.size / c
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean**2, 0.0))
    std = np.where(std < 1e-6, 1.0, std)  # constant channel: only shift it
    return [float(m) for m in mean], [float(s) for s in std]


def _normalise_inplace(x: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    shape = (1, len(mean)) + (1,) * (x.ndim - 2)
    x -= np.asarray(mean, dtype=np.float32).reshape(shape)
    x /= np.asarray(std, dtype=np.float32).reshape(shape)
    return x


def _seed(seed: int, offset: int = 0) -> int:
    return (int(seed) + offset) % (2**32)


def split_indices(
    y: np.ndarray, fraction: float, seed: int, *, origin: str, what: str
) -> tuple[np.ndarray, np.ndarray]:
    """Seeded stratified split of ``range(len(y))`` into (kept, split-off ``fraction``).

    Falls back to an unstratified split (with a warning) when some class is too
    rare to stratify, e.g. after a small ``dataset.limit``.
    """
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(y))
    try:
        kept, split = train_test_split(idx, test_size=fraction, random_state=seed, shuffle=True, stratify=y)
    except ValueError as strat_err:
        try:
            kept, split = train_test_split(idx, test_size=fraction, random_state=seed, shuffle=True)
        except ValueError as err:
            raise DataError(
                f"{origin}: cannot split {len(y)} samples into {what} ({err}); use more samples "
                f"(raise dataset.limit or dataset.samples)"
            ) from None
        warnings.warn(
            f"{origin}: {what} split is not stratified ({strat_err})", RuntimeWarning, stacklevel=3
        )
    return np.asarray(kept, dtype=np.int64), np.asarray(split, dtype=np.int64)


# ----------------------------------------------------------------- classes


@dataclass
class Preprocessing:
    """What was done to the raw training inputs; ``apply`` repeats it on new inputs."""

    channels: int
    spatial_shape: tuple[int, ...]
    mean: list[float]  # per channel, TRAIN split only
    std: list[float]
    resize: list[int] | None = None  # [H, W] that raw 2D inputs are resized to, or None

    def __post_init__(self) -> None:
        self.spatial_shape = tuple(int(s) for s in self.spatial_shape)
        self.mean = [float(m) for m in self.mean]
        self.std = [float(s) for s in self.std]
        self.resize = None if self.resize is None else [int(s) for s in self.resize]
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise DataError(
                f"preprocessing record: mean/std need {self.channels} entries (one per channel); "
                f"got {len(self.mean)} and {len(self.std)}"
            )

    def to_dict(self) -> dict[str, Any]:
        return {
            "channels": int(self.channels),
            "spatial_shape": list(self.spatial_shape),
            "mean": list(self.mean),
            "std": list(self.std),
            "resize": None if self.resize is None else list(self.resize),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Preprocessing":
        missing = [k for k in ("channels", "spatial_shape", "mean", "std") if k not in data]
        if missing:
            raise DataError(f"preprocessing record is missing {', '.join(missing)}; re-train to write a complete one")
        return cls(
            channels=int(data["channels"]),
            spatial_shape=tuple(data["spatial_shape"]),
            mean=list(data["mean"]),
            std=list(data["std"]),
            resize=data.get("resize"),
        )

    def apply(self, x: np.ndarray, *, origin: str = "inputs") -> np.ndarray:
        """Raw (N, C, *spatial) -> resized (2D, if this record resizes) and normalised float32.

        The input array is not modified.
        """
        original = x
        x = check_images(x, origin=origin, name="x")
        dims = len(self.spatial_shape)
        if x.ndim - 2 != dims:
            layout = "(N, C, H, W)" if dims == 2 else "(N, C, D, H, W)"
            raise DataError(
                f"{origin}: the model was trained on {dims}D inputs {layout}; got shape {tuple(x.shape)}"
            )
        if x.shape[1] != self.channels:
            raise DataError(
                f"{origin}: inputs have {x.shape[1]} channels but the model was trained on {self.channels}"
            )
        if tuple(x.shape[2:]) != self.spatial_shape:
            if dims == 2 and self.resize is not None:
                x = resize_images(x, self.spatial_shape)
            else:
                raise DataError(
                    f"{origin}: inputs have spatial shape {tuple(x.shape[2:])} but the model expects "
                    f"{self.spatial_shape}; resize them to that shape"
                )
        elif isinstance(original, np.ndarray) and np.shares_memory(x, original):
            x = x.copy()  # never normalise the caller's array in place
        return np.ascontiguousarray(_normalise_inplace(x, self.mean, self.std))


@dataclass
class Dataset:
    """Normalised splits, ready for the subdomain workers."""

    x_train: np.ndarray  # float32 C-contiguous (N, C, H, W) or (N, C, D, H, W)
    y_train: np.ndarray  # int64 (N,)
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    class_names: list[str]
    preprocessing: Preprocessing
    source: str = field(default="")

    @property
    def in_channels(self) -> int:
        return int(self.x_train.shape[1])

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        return tuple(int(s) for s in self.x_train.shape[2:])

    @property
    def spatial_dims(self) -> int:
        return len(self.spatial_shape)

    def summary(self) -> dict[str, Any]:
        def counts(y: np.ndarray) -> list[int]:
            return [int(c) for c in np.bincount(y, minlength=self.num_classes)]

        return {
            "source": self.source,
            "train": int(len(self.y_train)),
            "val": int(len(self.y_val)),
            "test": int(len(self.y_test)),
            "in_channels": self.in_channels,
            "spatial_shape": list(self.spatial_shape),
            "spatial_dims": self.spatial_dims,
            "num_classes": int(self.num_classes),
            "class_names": list(self.class_names),
            "class_counts": {"train": counts(self.y_train), "val": counts(self.y_val), "test": counts(self.y_test)},
        }


# ---------------------------------------------------------------- loading


def load_dataset(
    cfg: DatasetConfig, *, seed: int, grid: Sequence[int] | None = None, overlap: int = 0
) -> Dataset:
    """Load, validate, split and normalise the data set described by ``cfg``.

    Raises DataError (naming the file and the fix) before returning anything
    that could not be trained on, including images too small for ``grid``.
    """
    from ddray.data.sources import SOURCES

    raw = SOURCES[cfg.source](cfg, seed=seed, grid=list(grid) if grid is not None else None)
    origin, num_classes, class_names = raw.origin, int(raw.num_classes), list(raw.class_names)
    x, y, x_test, y_test = raw.x, raw.y, raw.x_test, raw.y_test
    if cfg.limit:
        x, y = x[: cfg.limit], y[: cfg.limit]
        if x_test is not None:
            x_test, y_test = x_test[: cfg.limit], y_test[: cfg.limit]

    # resize (2D only)
    image_size = check_image_size(cfg.image_size)
    target = list(image_size) if image_size is not None else raw.default_resize
    if target is not None:
        if x.ndim != 4:
            raise DataError(
                f"{origin}: dataset.image_size {target} resizes 2D images, but the data are 3D volumes "
                f"{tuple(x.shape[1:])}; remove dataset.image_size"
            )
        x = resize_images(x, target)
        if x_test is not None:
            x_test = resize_images(x_test, target)
    spatial = tuple(int(s) for s in x.shape[2:])
    if grid is not None:
        check_grid_fit(spatial, grid, overlap, origin=origin)

    # splits
    if x_test is None:
        train_idx, test_idx = split_indices(y, cfg.test_fraction, _seed(seed), origin=origin, what="train/test")
        x_test, y_test = x[test_idx], y[test_idx]
        x_pool, y_pool = x[train_idx], y[train_idx]
    else:
        x_pool, y_pool = x, y  # loaders return fresh arrays: x_test is normalised in place below
    fit_idx, val_idx = split_indices(
        y_pool, cfg.validation_fraction, _seed(seed, 1), origin=origin, what="train/validation"
    )
    x_train, y_train = x_pool[fit_idx], y_pool[fit_idx]
    x_val, y_val = x_pool[val_idx], y_pool[val_idx]
    x = x_pool = raw = None  # free the unsplit copies before normalising (CIFAR: ~600 MB each)
    if len(y_test) == 0:
        raise DataError(f"{origin}: the test split is empty; use more samples")

    mean, std = channel_stats(x_train)
    prep = Preprocessing(channels=int(x_train.shape[1]), spatial_shape=spatial, mean=mean, std=std, resize=target)
    for arr in (x_train, x_val, x_test):
        _normalise_inplace(arr, mean, std)
    return Dataset(
        x_train=np.ascontiguousarray(x_train, dtype=np.float32),
        y_train=np.ascontiguousarray(y_train, dtype=np.int64),
        x_val=np.ascontiguousarray(x_val, dtype=np.float32),
        y_val=np.ascontiguousarray(y_val, dtype=np.int64),
        x_test=np.ascontiguousarray(x_test, dtype=np.float32),
        y_test=np.ascontiguousarray(y_test, dtype=np.int64),
        num_classes=num_classes,
        class_names=class_names,
        preprocessing=prep,
        source=cfg.source,
    )


def load_predict_inputs(path: str | Path, preprocessing: Preprocessing) -> tuple[np.ndarray, list[str]]:
    """New inputs to classify, preprocessed like the training data, with one name each.

    ``path``: an .npz with array 'x' (N, C, *spatial) -> names 'x[0]', 'x[1]' ...;
    a single image file -> its file name; a folder of image files (recursive,
    sorted) -> their paths relative to the folder. Images are converted to the
    training channel count (L for 1, RGB for 3), scaled to [0, 1] and resized to
    the training spatial shape.
    """
    from ddray.data.sources import IMAGE_EXTENSIONS, is_image_file, list_image_files, read_images

    p = require_path(path, field=None, what="input path")
    origin = str(p)
    if p.is_file() and p.suffix.lower() == ".npz":
        try:
            f = np.load(p, allow_pickle=False)
        except Exception as err:  # noqa: BLE001 - any unreadable file is a DataError
            raise DataError(f"{origin}: not a readable .npz file ({err}); save with numpy.savez(path, x=inputs)") from None
        if not isinstance(f, np.lib.npyio.NpzFile):
            raise DataError(f"{origin}: holds a single array; save with numpy.savez(path, x=inputs)")
        with f:
            if "x" not in f.files:
                raise DataError(
                    f"missing array 'x' in {origin}; arrays present: {', '.join(f.files) or '(none)'}; "
                    f"save with numpy.savez(path, x=inputs)"
                )
            try:
                x_raw = f["x"]
            except ValueError as err:
                raise DataError(f"{origin}: array 'x' cannot be read without pickle ({err})") from None
        x = preprocessing.apply(x_raw, origin=origin)
        return x, [f"x[{i}]" for i in range(len(x))]

    if p.is_file():
        if not is_image_file(p):
            raise DataError(
                f"{origin}: unsupported input; give an .npz with array 'x', an image file "
                f"({', '.join(IMAGE_EXTENSIONS)}) or a folder of images"
            )
        files, names = [p], [p.name]
    else:
        files = list_image_files(p)
        if not files:
            raise DataError(f"{origin}: folder has no image files ({', '.join(IMAGE_EXTENSIONS)})")
        names = [f.relative_to(p).as_posix() for f in files]

    if len(preprocessing.spatial_shape) != 2:
        raise DataError(
            f"{origin}: the model classifies 3D volumes {preprocessing.spatial_shape}; image files cannot be "
            f"used, give an .npz with 'x' shaped (N, C, D, H, W)"
        )
    modes = {1: "L", 3: "RGB"}
    if preprocessing.channels not in modes:
        raise DataError(
            f"{origin}: the model expects {preprocessing.channels} channels; image files provide 1 (L) or 3 (RGB); "
            f"give an .npz with 'x' shaped (N, {preprocessing.channels}, H, W)"
        )
    raw = read_images(files, mode=modes[preprocessing.channels], size=preprocessing.spatial_shape)
    return preprocessing.apply(raw, origin=origin), names
