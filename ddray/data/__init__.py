"""Data sources, validation, preprocessing and splitting (pure numpy/torch, no Ray).

Public names: DataError, Preprocessing, Dataset, load_dataset,
read_predict_inputs, load_predict_inputs, scale_values; generators in
``ddray.data.synthetic``. How stored values become model inputs (the
preprocessing contract) is documented in docs/preprocessing.md.

Every source, its config keys and the files it expects are in docs/data.md.

Modules, each importing only those listed before it:
``validation`` (DataError, checks, the value scale), ``synthetic``,
``images`` (image files, resize), ``volumes`` (.npy / NIfTI volume files),
``raw`` (RawData), ``catalog`` (torchvision's file layouts, the missing-file
message); ``preprocessing`` (the Preprocessing record); ``cifar`` (torchvision's
CIFAR classes with a safe unpickler; imports torchvision), ``vision`` (mnist,
fashion_mnist, kmnist, cifar10, cifar100), ``folders`` (imagefolder,
volumefolder); ``sources`` (digits, npz, synthetic, the SOURCES registry),
``size`` (size from headers, the files' presence); ``dataset`` (Dataset,
splits, load_dataset); ``predict_inputs``. torchvision and nibabel are
imported only when a source needs them.
"""

from ddray.data.dataset import Dataset, load_dataset
from ddray.data.images import IMAGE_EXTENSIONS
from ddray.data.predict_inputs import load_predict_inputs, read_predict_inputs
from ddray.data.preprocessing import Preprocessing
from ddray.data.sources import SOURCES
from ddray.data.synthetic import generate_blobs, generate_count
from ddray.data.validation import DataError, scale_values, value_divisor
from ddray.data.volumes import VOLUME_EXTENSIONS

__all__ = [
    "DataError",
    "Dataset",
    "IMAGE_EXTENSIONS",
    "Preprocessing",
    "SOURCES",
    "VOLUME_EXTENSIONS",
    "generate_blobs",
    "generate_count",
    "load_dataset",
    "load_predict_inputs",
    "read_predict_inputs",
    "scale_values",
    "value_divisor",
]
