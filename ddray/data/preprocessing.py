"""The preprocessing record: how stored values became model inputs, and repeating it.

Model input = (resize(scale(stored)) - mean) / std per channel, with mean/std
of the TRAIN split (docs/preprocessing.md). :class:`Preprocessing` is written to
``RUN/preprocessing.json`` by ``load_dataset``, and every prediction path
(``ddray predict``, ``TrainedRun.predict_array``, the REST service) repeats it
through :meth:`Preprocessing.prepare`, which also flags inputs far from the
training distribution.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from ddray.data.images import CHUNK_SAMPLES, resize_images
from ddray.data.validation import DataError, check_images, scale_values


def describe_channels(x: np.ndarray) -> dict[str, np.ndarray]:
    """Per-channel mean, std, min and max as float64 arrays (float64 accumulation, chunked)."""
    c = x.shape[1]
    axes = (0,) + tuple(range(2, x.ndim))
    total = np.zeros(c)
    total_sq = np.zeros(c)
    lo = np.full(c, np.inf)
    hi = np.full(c, -np.inf)
    for start in range(0, len(x), CHUNK_SAMPLES):
        chunk = x[start : start + CHUNK_SAMPLES].astype(np.float64)
        total += chunk.sum(axis=axes)
        total_sq += np.square(chunk).sum(axis=axes)
        lo = np.minimum(lo, chunk.min(axis=axes))
        hi = np.maximum(hi, chunk.max(axis=axes))
    count = x.size / c
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean**2, 0.0))
    return {"mean": mean, "std": std, "min": lo, "max": hi}


def channel_stats(x: np.ndarray, stats: dict[str, np.ndarray] | None = None) -> tuple[list[float], list[float]]:
    """Per-channel mean and standard deviation; a constant channel gets std 1 (it is only shifted)."""
    stats = describe_channels(x) if stats is None else stats
    std = np.where(stats["std"] < 1e-6, 1.0, stats["std"])
    return [float(m) for m in stats["mean"]], [float(s) for s in std]


def normalise_inplace(x: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """(x - mean) / std per channel, in ``x`` itself: the splits can be large (CIFAR: ~600 MB)."""
    shape = (1, len(mean)) + (1,) * (x.ndim - 2)
    x -= np.asarray(mean, dtype=np.float32).reshape(shape)
    x /= np.asarray(std, dtype=np.float32).reshape(shape)
    return x


VALUE_SCALE = "dtype_max"  # the contract: bool/ints of <= 16 bits / their dtype's maximum, the rest as stored
LEGACY_VALUE_SCALE = "as_stored"  # records written before it (no 'value_scale'): npz arrays as stored
VALUE_SCALES = (VALUE_SCALE, LEGACY_VALUE_SCALE)
SCALE_FACTOR = 10.0  # inputs whose value scale is this many times off the training data's are flagged
SHIFT_STDS = 6.0  # ... and channels whose mean is this many training standard deviations away


@dataclass
class Preprocessing:
    """How stored values became model inputs in training; ``prepare`` repeats it on new inputs.

    Written to ``RUN/preprocessing.json``. Model input = (resize(scale(stored)) - mean) / std
    per channel, where ``scale`` is the value rule ``value_scale`` (docs/preprocessing.md).
    ``value_min``/``value_max`` are the per-channel range of the scaled, resized TRAIN split,
    against which prediction inputs are checked.
    """

    channels: int
    spatial_shape: tuple[int, ...]
    mean: list[float]  # per channel, TRAIN split only, on the scaled values
    std: list[float]
    resize: list[int] | None = None  # [H, W] that raw 2D inputs are resized to, or None
    value_scale: str = VALUE_SCALE
    source_values: str | None = None  # what the training source stored and how it was scaled: "uint8 / 255"
    value_min: list[float] | None = None  # per channel, TRAIN split, scaled (None in legacy records)
    value_max: list[float] | None = None

    def __post_init__(self) -> None:
        self.spatial_shape = tuple(int(s) for s in self.spatial_shape)
        self.mean = [float(m) for m in self.mean]
        self.std = [float(s) for s in self.std]
        self.resize = None if self.resize is None else [int(s) for s in self.resize]
        if self.value_scale not in VALUE_SCALES:
            raise DataError(
                f"preprocessing record: unknown value_scale '{self.value_scale}' (written by a newer ddray?); "
                f"this version knows {', '.join(VALUE_SCALES)}"
            )
        for name in ("value_min", "value_max"):
            values = getattr(self, name)
            if values is not None:
                setattr(self, name, [float(v) for v in values])
                if len(values) != self.channels:
                    raise DataError(f"preprocessing record: {name} needs {self.channels} entries (one per channel)")
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise DataError(
                f"preprocessing record: mean/std need {self.channels} entries (one per channel); "
                f"got {len(self.mean)} and {len(self.std)}"
            )

    @property
    def legacy(self) -> bool:
        """A record of a run made before the value-scale rule: npz arrays are used as stored."""
        return self.value_scale == LEGACY_VALUE_SCALE

    def to_dict(self) -> dict[str, Any]:
        return {
            "channels": int(self.channels),
            "spatial_shape": list(self.spatial_shape),
            "mean": list(self.mean),
            "std": list(self.std),
            "resize": None if self.resize is None else list(self.resize),
            "value_scale": self.value_scale,
            "source_values": self.source_values,
            "value_min": None if self.value_min is None else list(self.value_min),
            "value_max": None if self.value_max is None else list(self.value_max),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Preprocessing":
        """A saved record; one without ``value_scale`` (before the rule) keeps the old behaviour."""
        missing = [k for k in ("channels", "spatial_shape", "mean", "std") if k not in data]
        if missing:
            raise DataError(f"preprocessing record is missing {', '.join(missing)}; re-train to write a complete one")
        return cls(
            channels=int(data["channels"]),
            spatial_shape=tuple(data["spatial_shape"]),
            mean=list(data["mean"]),
            std=list(data["std"]),
            resize=data.get("resize"),
            value_scale=data.get("value_scale", LEGACY_VALUE_SCALE),
            source_values=data.get("source_values"),
            value_min=data.get("value_min"),
            value_max=data.get("value_max"),
        )

    # -- applying the record ------------------------------------------------
    def scale(self, x: np.ndarray, *, origin: str = "inputs") -> np.ndarray:
        """Stored values -> validated float32 on the training value scale (may share memory with ``x``)."""
        if self.legacy:
            return check_images(x, origin=origin, name="x")
        return scale_values(x, origin=origin, name="x")

    def prepare(self, x: np.ndarray, *, origin: str = "inputs") -> tuple[np.ndarray, list[str]]:
        """Stored (N, C, *spatial) -> (model inputs, warnings): scaled, resized (2D, if this record
        resizes), checked against the training distribution, normalised. ``x`` is not modified."""
        original = x
        x = self.scale(x, origin=origin)
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
        found = self.check_inputs(x, origin=origin)
        return np.ascontiguousarray(normalise_inplace(x, self.mean, self.std)), found

    def apply(self, x: np.ndarray, *, origin: str = "inputs") -> np.ndarray:
        """``prepare`` without the warnings."""
        return self.prepare(x, origin=origin)[0]

    def check_model_inputs(self, x: np.ndarray, *, origin: str = "inputs") -> list[str]:
        """``check_inputs`` for arrays that are already model inputs (normalised)."""
        if np.ndim(x) < 3 or np.shape(x)[1] != self.channels:
            return []
        shape = (1, self.channels) + (1,) * (np.ndim(x) - 2)
        scaled = np.asarray(x, dtype=np.float64) * np.asarray(self.std).reshape(shape) + np.asarray(self.mean).reshape(shape)
        return self.check_inputs(scaled, origin=origin)

    def looks_normalised(self, x: np.ndarray) -> bool:
        """True when float ``x`` looks like this run's model inputs (per-channel mean ~0 and std ~1)
        while the training data's scaled values did not, so the two cannot be mistaken for each other."""
        x = np.asarray(x)
        if x.dtype.kind != "f" or x.size == 0 or x.ndim < 3 or x.shape[1] != self.channels:
            return False
        got = describe_channels(x)
        standard = bool(np.all(np.abs(got["mean"]) <= 0.2) and np.all(np.abs(got["std"] - 1) <= 0.2))
        mean, std = np.asarray(self.mean), np.asarray(self.std)
        return standard and bool(np.any(np.abs(mean) > 0.5) or np.any(np.abs(std - 1) > 0.5))

    def training_values(self) -> str:
        """The training data's scaled per-channel statistics, for messages."""
        source = f", {self.source_values}" if self.source_values else ""
        return f"mean {'/'.join(_num(m) for m in self.mean)}, std {'/'.join(_num(v) for v in self.std)}{source}"

    # -- out-of-distribution inputs -------------------------------------------
    def check_inputs(self, x: np.ndarray, *, origin: str = "inputs") -> list[str]:
        """Warnings when scaled inputs are far from the training data: inputs that look already
        normalised (mean 0, std 1) when the training data did not; a value scale off by
        ``SCALE_FACTOR`` or more (naming the likely cause, e.g. 0-255 against 0-1); else a
        channel whose mean is ``SHIFT_STDS`` training standard deviations away or whose
        spread differs by ``SCALE_FACTOR``. Empty when the inputs look like the training data."""
        if x.size == 0 or x.ndim < 3 or x.shape[1] != self.channels:
            return []
        got = describe_channels(x)
        mean, std = np.asarray(self.mean), np.asarray(self.std)
        lo, hi = float(got["min"].min()), float(got["max"].max())
        if self.value_min is not None and self.value_max is not None:
            t_lo, t_hi = min(self.value_min), max(self.value_max)
            trained = f"{_num(t_lo)}..{_num(t_hi)}"
            t_amp, p_amp = max(abs(t_lo), abs(t_hi)), max(abs(lo), abs(hi))
        else:  # legacy record: no range, compare root mean squares
            t_lo = t_hi = None
            trained = "mean " + "/".join(_num(m) for m in mean) + ", std " + "/".join(_num(s) for s in std)
            t_amp = float(np.sqrt(mean**2 + std**2).max())
            p_amp = float(np.sqrt(got["mean"] ** 2 + got["std"] ** 2).max())
        source = f", {self.source_values}" if self.source_values else ""
        if self.looks_normalised(x):
            return [
                f"{origin}: inputs look already normalised (per-channel mean ~0, std ~1, unlike the training data: "
                f"{self.training_values()}) but were taken as stored values and normalised again, which gives wrong "
                f"predictions; for model inputs such as a Dataset's splits use TrainedRun.predict_array(x, preprocessed=True)"
            ]
        if t_amp > 0 and p_amp > 0:
            ratio = p_amp / t_amp
            if ratio >= SCALE_FACTOR or ratio <= 1 / SCALE_FACTOR:
                return [self._scale_warning(origin, ratio, lo, hi, t_lo, t_hi, trained, source)]
        found = []
        for c in range(self.channels):
            shift = abs(got["mean"][c] - mean[c]) / std[c]
            spread = got["std"][c] / std[c]
            if shift >= SHIFT_STDS or spread >= SCALE_FACTOR or 0 < spread <= 1 / SCALE_FACTOR:
                found.append(
                    f"{origin}: channel {c} of the inputs has mean {_num(got['mean'][c])} and std {_num(got['std'][c])}, "
                    f"the training data had mean {_num(mean[c])} and std {_num(std[c])}{source} "
                    f"(mean {shift:.1f} training std away, spread {spread:.2g}x): the inputs are far from the training "
                    f"distribution; check that they are the same kind of data, scaled the same way"
                )
        return found

    def _scale_warning(self, origin, ratio, lo, hi, t_lo, t_hi, trained, source) -> str:
        looks_255 = -0.5 <= lo and 1.5 < hi <= 255.5
        looks_01 = -1e-3 <= lo and hi <= 1.0 + 1e-3
        near_255 = 255 / 4 <= ratio <= 255 * 4
        near_inv_255 = 255 / 4 <= 1 / ratio <= 255 * 4
        seen = f"input values {_num(lo)}..{_num(hi)}, training values {trained}{source}"
        if looks_255 and near_255 and (t_hi is None or t_hi <= 1.0 + 1e-3):
            return (
                f"{origin}: inputs look 0-255 but the model was trained on 0-1 ({seen}): store 8-bit images as "
                f"uint8 (ddray divides them by 255 in every format) or divide float inputs by 255"
            )
        if looks_01 and near_inv_255 and (t_hi is None or t_hi > 1.5):
            fix = (
                "this run predates ddray's value-scale rule and used its npz arrays as stored: give the inputs "
                "as an .npz of the same dtype as the training data, or retrain"
                if self.legacy
                else "the training data were floats 0-255, used as stored: multiply these inputs by 255, or "
                "retrain with the images stored as uint8 so every format reaches the model as 0-1"
            )
            return f"{origin}: inputs look 0-1 but the model was trained on 0-255 ({seen}): {fix}"
        size = f"about {ratio:.3g}x larger" if ratio > 1 else f"about {1 / ratio:.3g}x smaller"
        return (
            f"{origin}: inputs are {size} than the training data ({seen}): they are probably scaled "
            f"differently, so the predictions are unreliable; see docs/preprocessing.md"
        )


def _num(v: float) -> str:
    return f"{float(v):.4g}"
