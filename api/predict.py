"""Prediction with a finished job's model: uploads saved to a private temp folder, no Ray.

Uploads are data only: ``.npz`` archives are read with ``allow_pickle=False``
by ddray's loaders and images through Pillow; file names are reduced to a
safe base name and must have an allowed suffix.
"""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

NPZ_SUFFIXES = {".npz"}
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm", ".ppm"}
UPLOAD_SUFFIXES = NPZ_SUFFIXES | IMAGE_SUFFIXES


class UploadError(ValueError):
    """An upload the service will not read (HTTP 422)."""


def check_decoded_size(path: Path, limit: int) -> int:
    """Bytes ``path`` decodes to, from headers only (npz member headers, image dimensions); UploadError over ``limit``."""
    from PIL import Image

    from ddray.data import DataError
    from ddray.data.size import image_bytes, npz_bytes

    Image.MAX_IMAGE_PIXELS = max(1, limit // 4)  # Pillow's own bomb check refuses what is far over
    try:
        total = npz_bytes(path) if path.suffix.lower() in NPZ_SUFFIXES else image_bytes(path)
    except DataError as err:
        raise UploadError(f"upload {err}") from None
    if total > limit:
        raise UploadError(
            f"upload {path.name} decodes to {total} bytes, over the limit of {limit} (DDRAY_MAX_DECODED_BYTES); send fewer or smaller inputs"
        )
    return total


def safe_name(filename: str | None, index: int) -> str:
    """A base name without folders or odd characters, keeping the suffix; UploadError for other suffixes."""
    base = Path((filename or "").replace("\\", "/")).name
    suffix = Path(base).suffix.lower()
    if suffix not in UPLOAD_SUFFIXES:
        raise UploadError(
            f"upload {filename!r}: only {', '.join(sorted(UPLOAD_SUFFIXES))} files can be classified"
        )
    stem = re.sub(r"[^A-Za-z0-9_.-]", "_", Path(base).stem)[:100].lstrip(".") or f"upload{index}"
    return f"{stem}{suffix}"


class ModelCache:
    """Loaded ``TrainedRun`` objects per job (a few, least recently used dropped)."""

    def __init__(self, size: int = 4):
        self.size = size
        self._items: OrderedDict[str, Any] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, job_id: str, run_dir: Path) -> Any:
        with self._lock:
            if job_id in self._items:
                self._items.move_to_end(job_id)
                return self._items[job_id]
        from ddray.predict import TrainedRun  # torch is imported on the first prediction only

        model = TrainedRun(run_dir)
        with self._lock:
            self._items[job_id] = model
            while len(self._items) > self.size:
                self._items.popitem(last=False)
        return model


def _predict(model: Any, path: Path, label: str) -> Any:
    """The run's ``Predictions`` of one upload (or the folder of uploaded images); warnings name ``label``."""
    from ddray.data import read_predict_inputs

    x, names = read_predict_inputs(path, model.preprocessing)
    return model.predict_array(x, names, preprocessed=False, origin=label, warn=False)


def predict_files(model: Any, folder: Path, names: list[str]) -> tuple[list[dict], list[str]]:
    """(records, warnings) of every uploaded input: each npz on its own, the images together as one folder.

    Inputs go through the run's preprocessing record like ``ddray predict``'s, so an image
    gives the same answer as a PNG or as a uint8 npz; inputs far from the training
    distribution add a warning naming the upload and the likely cause."""
    records: list[dict] = []
    warnings: list[str] = []
    images = [n for n in names if Path(n).suffix.lower() in IMAGE_SUFFIXES]
    for name in names:
        if Path(name).suffix.lower() in NPZ_SUFFIXES:
            preds = _predict(model, folder / name, name)
            rows = preds.records()
            if len(rows) > 0 and all(str(r.get("input", "")).startswith("x[") for r in rows):
                for r in rows:
                    r["input"] = f"{name}:{r['input']}"
            records.extend(rows)
            warnings.extend(preds.warnings)
    if len(images) == 1:
        preds = _predict(model, folder / images[0], images[0])
        records.extend(preds.records())
        warnings.extend(preds.warnings)
    elif images:
        image_dir = folder / "images"
        image_dir.mkdir(exist_ok=True)
        for n in images:
            (folder / n).rename(image_dir / n)
        preds = _predict(model, image_dir, f"{len(images)} uploaded images")
        records.extend(preds.records())
        warnings.extend(preds.warnings)
    return records, warnings
