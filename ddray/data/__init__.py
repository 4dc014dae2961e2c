"""Data sources, validation, preprocessing and splitting (pure numpy/torch, no Ray).

Public names: DataError, Preprocessing, Dataset, load_dataset,
read_predict_inputs, load_predict_inputs, scale_values; generators in
``ddray.data.synthetic``. How stored values become model inputs (the
preprocessing contract) is documented in docs/preprocessing.md.
"""

from ddray.data.dataset import Dataset, Preprocessing, load_dataset, load_predict_inputs, read_predict_inputs
from ddray.data.sources import IMAGE_EXTENSIONS, SOURCES
from ddray.data.synthetic import generate_blobs, generate_count
from ddray.data.validation import DataError, scale_values, value_divisor

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
    "read_predict_inputs",
    "scale_values",
    "value_divisor",
]
