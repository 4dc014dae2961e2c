"""Data sources, validation, preprocessing and splitting (pure numpy/torch, no Ray).

Public names: DataError, Preprocessing, Dataset, load_dataset,
load_predict_inputs; generators in ``ddray.data.synthetic``.
"""

from ddray.data.dataset import Dataset, Preprocessing, load_dataset, load_predict_inputs
from ddray.data.sources import IMAGE_EXTENSIONS, SOURCES
from ddray.data.synthetic import generate_blobs, generate_count
from ddray.data.validation import DataError

__all__ = [
    "DataError",
    "Dataset",
    "IMAGE_EXTENSIONS",
    "Preprocessing",
    "SOURCES",
    "generate_blobs",
    "generate_count",
    "load_dataset",
    "load_predict_inputs",
]
