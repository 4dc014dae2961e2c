"""The in-memory Dataset, its seeded splits, and ``load_dataset`` that builds it.

``load_dataset`` = size check from headers -> source loader (validated arrays
on the contract's value scale: integers of up to 16 bits / their dtype's
maximum, floats as stored) -> ``dataset.limit`` -> resize
(``dataset.image_size``, 2D only) -> grid-fit check -> seeded stratified
splits -> per-channel mean/std on the TRAIN split -> normalise. What was done
is recorded in a :class:`~ddray.data.preprocessing.Preprocessing`, which every
prediction path repeats. The rule is documented once, in docs/preprocessing.md.
"""

from __future__ import annotations

import hashlib
import warnings
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from ddray.config import DatasetConfig
from ddray.data.images import resize_images
from ddray.data.preprocessing import VALUE_SCALE, Preprocessing, channel_stats, describe_channels, normalise_inplace
from ddray.data.size import check_dataset_size
from ddray.data.sources import SOURCES
from ddray.data.split import shuffle_split, stratified_split
from ddray.data.validation import DataError, check_grid_fit, check_image_size
from ddray.limits import Limits

SPLITS = ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test")


def _seed(seed: int, offset: int = 0) -> int:
    return (int(seed) + offset) % (2**32)


def split_indices(
    y: np.ndarray, fraction: float, seed: int, *, origin: str, what: str
) -> tuple[np.ndarray, np.ndarray]:
    """Seeded stratified split of ``range(len(y))`` into (kept, split-off ``fraction``).

    Falls back to an unstratified split (with a warning) when some class is too
    rare to stratify, e.g. after a small ``dataset.limit``.
    """
    try:
        kept, split = stratified_split(y, fraction, seed)
    except ValueError as strat_err:
        try:
            kept, split = shuffle_split(len(y), fraction, seed)
        except ValueError as err:
            raise DataError(
                f"{origin}: cannot split {len(y)} samples into {what} ({err}); use more samples "
                f"(raise dataset.limit or dataset.samples)"
            ) from None
        warnings.warn(
            f"{origin}: {what} split is not stratified ({strat_err})", RuntimeWarning, stacklevel=3
        )
    return np.asarray(kept, dtype=np.int64), np.asarray(split, dtype=np.int64)


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

    def arrays(self) -> dict[str, np.ndarray]:
        """The six split arrays by name (``x_train`` ... ``y_test``), the dataset's own, not copies:
        what the driver puts in Ray's object store once for every worker."""
        return {name: getattr(self, name) for name in SPLITS}

    def fingerprint(self) -> str:
        """sha256 over every split's model inputs (dtype, shape, bytes) and labels, in a fixed order:
        equal for two runs exactly when they trained, validated and tested on the same arrays."""
        digest = hashlib.sha256()
        for name in SPLITS:
            a = np.ascontiguousarray(getattr(self, name))
            digest.update(f"{name}:{a.dtype.str}:{a.shape};".encode())
            digest.update(memoryview(a).cast("B"))
        return digest.hexdigest()

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
    check_dataset_size(cfg, Limits().dataset_bytes)  # from headers: nothing huge is decoded to find out
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
    source_values = raw.values
    x = x_pool = raw = None  # free the unsplit copies before normalising (CIFAR: ~600 MB each)
    if len(y_test) == 0:
        raise DataError(f"{origin}: the test split is empty; use more samples")

    stats = describe_channels(x_train)
    mean, std = channel_stats(x_train, stats)
    prep = Preprocessing(
        channels=int(x_train.shape[1]),
        spatial_shape=spatial,
        mean=mean,
        std=std,
        resize=target,
        value_scale=VALUE_SCALE,
        source_values=source_values,
        value_min=[float(v) for v in stats["min"]],
        value_max=[float(v) for v in stats["max"]],
    )
    for arr in (x_train, x_val, x_test):
        normalise_inplace(arr, mean, std)
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
