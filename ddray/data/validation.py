"""Checks on raw arrays before anything is trained on them.

Every failure raises :class:`DataError` whose message names the file (or the
source) first, then the problem, then how to fix it, e.g.
``data.npz: 'y' has 90 labels but 'x' has 100 samples; they must match``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from ddray.decomposition import DecompositionError, check_fits

SPATIAL_LAYOUTS = "(N, C, H, W) or (N, C, D, H, W)"


class DataError(ValueError):
    """Input data that cannot be used; the message names the file, the problem and the fix."""


def require_path(path: str | Path | None, field: str | None = "dataset.path", what: str = "dataset path") -> Path:
    """The path as a ``Path``; DataError when it is not set or does not exist."""
    where = f" ({field})" if field else ""
    if path is None or str(path) == "":
        raise DataError(f"no {what} given{where}; set it to the data file or folder")
    p = Path(path).expanduser()
    if not p.exists():
        raise DataError(f"{what} not found: {path}{where}")
    return p


def check_images(x: np.ndarray, *, origin: str, name: str = "x") -> np.ndarray:
    """Validate an image/volume batch and return it as C-contiguous float32.

    Accepts any real numeric dtype (bool, ints such as uint8, floats); the
    values are converted, not rescaled (:func:`scale_values` also rescales).
    """
    x = np.asarray(x)
    if x.dtype.kind not in "biuf":
        raise DataError(
            f"{origin}: '{name}' must be a real numeric array (float or integer pixels); got dtype {x.dtype}"
        )
    if x.ndim not in (4, 5):
        hint = ""
        if x.ndim == 3:
            hint = "; for single-channel images add a channel axis, e.g. x[:, None]"
        elif x.ndim == 2:
            hint = "; flattened images must be reshaped to (N, C, H, W)"
        raise DataError(f"{origin}: '{name}' must be shaped {SPATIAL_LAYOUTS}; got {tuple(x.shape)}{hint}")
    if x.shape[0] == 0:
        raise DataError(f"{origin}: '{name}' is empty (0 samples)")
    if any(s == 0 for s in x.shape[1:]):
        raise DataError(f"{origin}: '{name}' has an empty axis: shape {tuple(x.shape)}")
    if x.shape[-1] in (1, 3, 4) and x.shape[1] > 4:  # (N, H, W, C): no real image is <= 4 px wide
        raise DataError(
            f"{origin}: '{name}' has shape {tuple(x.shape)}, which looks channels-last; ddray expects "
            f"channels first {SPATIAL_LAYOUTS}: use np.moveaxis(x, -1, 1)"
        )
    was_float = x.dtype.kind == "f"
    x = np.ascontiguousarray(x, dtype=np.float32)
    if not was_float:  # bool/int pixels are always finite after conversion
        return x
    finite = np.isfinite(x)
    if not finite.all():
        bad_sample = int(np.argwhere(~finite.reshape(len(x), -1).all(axis=1))[0, 0])
        raise DataError(
            f"{origin}: '{name}' contains NaN or infinite values (first in sample {bad_sample}, "
            f"or values beyond the float32 range); clean or impute them"
        )
    return x


def value_divisor(dtype: np.dtype) -> int | None:
    """What ddray divides stored values of ``dtype`` by (docs/preprocessing.md).

    bool and integers of up to 16 bits (uint8, int8, uint16, int16): their dtype's
    maximum (bool: 1), so 8-bit pixels 0..255 become 0..1 whether they come from an
    npz, a PNG or CIFAR-10; floats and wider integers: None, used as stored.
    """
    dtype = np.dtype(dtype)
    if dtype.kind == "b":
        return 1
    if dtype.kind in "iu" and dtype.itemsize <= 2:
        return int(np.iinfo(dtype).max)
    return None


def describe_values(dtype: np.dtype) -> str:
    """How values of ``dtype`` are scaled, for records and messages: 'uint8 / 255', 'float32 as stored'."""
    dtype = np.dtype(dtype)
    divisor = value_divisor(dtype)
    if dtype.kind == "b" or divisor is None:
        return f"{dtype.name} as stored"
    return f"{dtype.name} / {divisor}"


def scale_values(x: np.ndarray, *, origin: str, name: str = "x") -> np.ndarray:
    """``check_images`` plus the value scale of ``value_divisor``: stored values -> float32 model units.

    The one place where stored pixel values become numbers: every source and every
    prediction input goes through it (image files too, as the uint8/uint16 arrays
    Pillow decodes them to), so the same image gives the same array in any format.
    """
    x = np.asarray(x)
    divisor = value_divisor(x.dtype) if x.dtype.kind in "biu" else None
    out = check_images(x, origin=origin, name=name)  # a fresh float32 array for bool/integer input
    if divisor not in (None, 1):
        out /= np.float32(divisor)
    return out


def check_labels(y: np.ndarray, *, origin: str, n: int, name: str = "y", x_name: str = "x") -> np.ndarray:
    """Validate integer class labels (N,) matching ``n`` samples; returns int64."""
    y = np.asarray(y)
    if y.dtype.kind in "iu":
        pass
    elif y.dtype.kind == "f":
        if not np.isfinite(y).all():
            raise DataError(f"{origin}: labels '{name}' must be integers; found NaN or infinite values")
        fractional = y[y != np.round(y)]
        if fractional.size:
            raise DataError(
                f"{origin}: labels '{name}' must be integers (class ids 0..K-1); found fractional "
                f"value {float(fractional.flat[0])}"
            )
    else:
        raise DataError(
            f"{origin}: labels '{name}' must be integers (class ids 0..K-1); got dtype {y.dtype}; "
            f"map class names to ids and store the names in an array 'class_names'"
        )
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        hint = "; one-hot labels must be stored as class ids, e.g. y.argmax(axis=1)" if y.ndim == 2 else ""
        raise DataError(f"{origin}: labels '{name}' must be shaped (N,); got {tuple(y.shape)}{hint}")
    if len(y) != n:
        raise DataError(
            f"{origin}: '{name}' has {len(y)} labels but '{x_name}' has {n} samples; they must match"
        )
    y = y.astype(np.int64)
    negative = y[y < 0]
    if negative.size:
        raise DataError(f"{origin}: labels must be integers in [0, K); found {int(negative[0])} in '{name}'")
    return y


def check_label_range(y: np.ndarray, num_classes: int, *, origin: str, name: str = "y", why: str = "") -> None:
    """Every label in [0, num_classes)."""
    bad = y[(y < 0) | (y >= num_classes)]
    if bad.size:
        raise DataError(
            f"{origin}: labels must be integers in [0, {num_classes}); found {int(bad[0])} in '{name}'{why}"
        )


def check_same_layout(x_other: np.ndarray, x: np.ndarray, *, origin: str, name: str, ref: str = "x") -> None:
    """``x_other`` must have the channel count and spatial shape of ``x``."""
    if x_other.ndim != x.ndim:
        raise DataError(
            f"{origin}: '{name}' has {x_other.ndim - 2} spatial dimensions {tuple(x_other.shape)} but "
            f"'{ref}' has {x.ndim - 2} {tuple(x.shape)}; they must match"
        )
    if x_other.shape[1] != x.shape[1]:
        raise DataError(
            f"{origin}: '{name}' has {x_other.shape[1]} channels but '{ref}' has {x.shape[1]}; they must match"
        )
    if x_other.shape[2:] != x.shape[2:]:
        raise DataError(
            f"{origin}: '{name}' has spatial shape {tuple(x_other.shape[2:])} but '{ref}' has "
            f"{tuple(x.shape[2:])}; they must match (or set dataset.image_size for 2D images)"
        )


def check_grid_fit(spatial_shape: Sequence[int], grid: Sequence[int], overlap: int, *, origin: str) -> None:
    """decomposition.check_fits, re-raised as DataError naming the data."""
    try:
        check_fits(spatial_shape, grid, overlap)
    except DecompositionError as err:
        raise DataError(f"{origin}: {err}") from None


def check_image_size(image_size: Sequence[int] | None) -> tuple[int, int] | None:
    """dataset.image_size as (H, W) or None."""
    if image_size is None:
        return None
    size = tuple(int(s) for s in image_size)
    if len(size) != 2 or any(s < 1 for s in size):
        raise DataError(f"dataset.image_size must be [H, W] with positive entries; got {list(image_size)}")
    return size  # type: ignore[return-value]
