"""``RawData``: what every source loader returns and ``load_dataset`` consumes.

Its own module so that loaders in different modules (``sources``, ``vision``, ``folders``)
share it without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class RawData:
    """What a loader hands to ``load_dataset``: validated, un-normalised arrays."""

    x: np.ndarray  # float32 (N, C, *spatial)
    y: np.ndarray  # int64 (N,)
    num_classes: int
    class_names: list[str]
    origin: str  # file / folder / source name used in messages
    x_test: np.ndarray | None = None
    y_test: np.ndarray | None = None
    default_resize: list[int] | None = None  # resize target when dataset.image_size is unset (digits)
    values: str = "float32 as stored"  # how stored values were scaled (describe_values), for the record
