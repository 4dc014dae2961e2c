"""Class-per-subfolder sources, torchvision's ``DatasetFolder`` semantics: ``imagefolder`` and ``volumefolder``.

``root/<class>/<file>`` (class = subfolder, classes sorted by name, files found
recursively), or ``root/train/<class>/...`` with ``root/test/<class>/...`` as the
test split. :class:`ClassFolder` is ``torchvision.datasets.DatasetFolder`` with
three differences: hidden files and folders (``.ipynb_checkpoints``) are
skipped, symlinked folders are not followed (a link to a parent folder would
make torchvision walk forever), and its errors are DataErrors naming the fix.
Files are decoded by ``images.read_images`` / ``volumes.read_volumes``, the same
functions ``ddray predict`` uses, so a file gives the same tensor in both.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ddray.config import DatasetConfig
from ddray.data.images import IMAGE_EXTENSIONS, IMAGE_VALUES, is_image_file, list_image_files, probe_images, read_images
from ddray.data.raw import RawData
from ddray.data.validation import DataError, check_image_size, describe_values, require_path
from ddray.data.volumes import VOLUME_EXTENSIONS, is_volume_file, list_volume_files, read_volume, read_volumes, volume_header


@dataclass(frozen=True)
class FolderKind:
    source: str
    what: str  # "image" or "volume"
    extensions: tuple[str, ...]
    example: str
    is_file: Callable[[Path], bool]
    list_files: Callable[[Path], list[Path]]
    read_one: Callable[[Path], object]  # the DatasetFolder loader


def _read_one_image(path: str) -> np.ndarray:
    gray, _, _ = probe_images([Path(path)])
    return read_images([Path(path)], mode="L" if gray else "RGB", size=None)[0]


IMAGES = FolderKind("imagefolder", "image", IMAGE_EXTENSIONS, "root/cat/img1.png", is_image_file, list_image_files, _read_one_image)
VOLUMES = FolderKind(
    "volumefolder", "volume", VOLUME_EXTENSIONS, "root/tumour/case1.nii.gz", is_volume_file, list_volume_files,
    lambda path: read_volume(Path(path)),
)


def class_folder(root: Path, kind: FolderKind, classes: list[str] | None = None):
    """A :class:`ClassFolder` (torchvision imported on first use)."""
    from torchvision.datasets import DatasetFolder

    class ClassFolder(DatasetFolder):
        """torchvision's DatasetFolder; hidden entries skipped, symlinked folders not followed,
        ``classes`` (the training split's) fixed for a test split."""

        def __init__(self) -> None:
            super().__init__(str(root), loader=kind.read_one, extensions=kind.extensions, allow_empty=classes is not None)

        def find_classes(self, directory: str) -> tuple[list[str], dict[str, int]]:
            names = sorted(e.name for e in os.scandir(directory) if e.is_dir() and not e.name.startswith("."))
            if not names:
                loose = [p for p in Path(directory).iterdir() if kind.is_file(p)]
                extra = f"; found {len(loose)} {kind.what} files directly in it: move them into one subfolder per class" if loose else ""
                raise DataError(
                    f"{directory}: no class folders; source '{kind.source}' expects one subfolder per class "
                    f"({kind.example} ...){extra}"
                )
            if classes is None:
                return names, {c: i for i, c in enumerate(names)}
            for name in names:
                if name not in classes:
                    raise DataError(
                        f"{Path(directory) / name}: class '{name}' does not exist in the training split; "
                        f"training classes: {', '.join(classes)}"
                    )
            return list(classes), {c: i for i, c in enumerate(classes)}

        def make_dataset(self, directory, class_to_idx, extensions=None, is_valid_file=None, allow_empty=False):
            samples = []
            for name, index in sorted(class_to_idx.items(), key=lambda item: item[1]):
                folder = Path(directory) / name
                found = kind.list_files(folder) if folder.is_dir() else []
                if not found and not allow_empty:
                    raise DataError(
                        f"{folder}: class folder has no {kind.what} files ({', '.join(kind.extensions)}); "
                        f"add some or remove the folder"
                    )
                samples += [(str(p), index) for p in found]
            return samples

    return ClassFolder()


def _round_robin(labels: Sequence[int]) -> np.ndarray:
    """Order that interleaves classes (1st of each class, 2nd of each class, ...),
    so ``dataset.limit`` keeps every class of a class-sorted folder tree."""
    labels = np.asarray(labels)
    rank = np.zeros(len(labels), dtype=np.int64)
    for c in np.unique(labels):
        where = np.flatnonzero(labels == c)
        rank[where] = np.arange(len(where))
    return np.lexsort((labels, rank))


@dataclass
class Listing:
    files: list[Path]
    labels: list[int]
    classes: list[str]
    test_files: list[Path]
    test_labels: list[int]
    root: Path


def list_class_folders(cfg: DatasetConfig, kind: FolderKind) -> Listing:
    """Files and labels of both splits, class-interleaved and cut to ``dataset.limit``."""
    root = require_path(cfg.path, field="dataset.root", what="dataset root")
    if not root.is_dir():
        raise DataError(f"{root}: source '{kind.source}' needs a folder with one subfolder per class ({kind.example} ...), not a file")
    train_dir, test_dir = root / "train", root / "test"
    split_layout = train_dir.is_dir() and test_dir.is_dir() and any(
        d.is_dir() and not d.name.startswith(".") for d in train_dir.iterdir()
    )
    train = class_folder(train_dir if split_layout else root, kind)
    test = class_folder(test_dir, kind, train.classes) if split_layout else None
    files, labels = [Path(p) for p, _ in train.samples], list(train.targets)
    test_files, test_labels = ([Path(p) for p, _ in test.samples], list(test.targets)) if test else ([], [])
    if split_layout and not test_files:
        raise DataError(f"{test_dir}: the test split has no {kind.what} files; add some or remove the 'test' folder")
    order = _round_robin(labels)
    files, labels = [files[i] for i in order], [labels[i] for i in order]
    if cfg.limit:
        files, labels = files[: cfg.limit], labels[: cfg.limit]
        test_files, test_labels = test_files[: cfg.limit], test_labels[: cfg.limit]
    return Listing(files, labels, list(train.classes), test_files, test_labels, root)


def _raw(listing: Listing, x: np.ndarray, x_test: np.ndarray | None, values: str) -> RawData:
    return RawData(
        x=x,
        y=np.asarray(listing.labels, dtype=np.int64),
        num_classes=len(listing.classes),
        class_names=list(listing.classes),
        origin=str(listing.root),
        x_test=x_test,
        y_test=np.asarray(listing.test_labels, dtype=np.int64) if x_test is not None else None,
        values=values,
    )


def load_imagefolder(cfg: DatasetConfig, *, seed: int, grid: Sequence[int] | None) -> RawData:
    """Image files (PNG, JPEG ...), grayscale when every file is, else RGB; one size, or ``dataset.image_size``."""
    listing = list_class_folders(cfg, IMAGES)
    image_size = check_image_size(cfg.image_size)
    gray, sizes, examples = probe_images(listing.files + listing.test_files)
    if image_size is None and len(sizes) > 1:
        (a, pa), (b, pb) = list(examples.items())[:2]
        raise DataError(
            f"{listing.root}: images have different sizes ({pa} is {a[0]}x{a[1]}, {pb} is {b[0]}x{b[1]}, "
            f"{len(sizes)} sizes in all); set dataset.image_size: [H, W] to resize them"
        )
    mode = "L" if gray else "RGB"
    x = read_images(listing.files, mode=mode, size=image_size)
    x_test = read_images(listing.test_files, mode=mode, size=image_size) if listing.test_files else None
    return _raw(listing, x, x_test, IMAGE_VALUES)


def load_volumefolder(cfg: DatasetConfig, *, seed: int, grid: Sequence[int] | None) -> RawData:
    """3D volumes (.npy, .nii, .nii.gz) of one shape, as (N, C, D, H, W)."""
    if cfg.image_size is not None:
        raise DataError(
            "dataset.image_size resizes 2D images; source 'volumefolder' does not resize volumes: remove "
            "dataset.image_size and store the volumes at one shape"
        )
    listing = list_class_folders(cfg, VOLUMES)
    both = listing.files + listing.test_files
    x_all = read_volumes(both, origin=str(listing.root))  # one shape and value scale across both splits
    n = len(listing.files)
    x_test = x_all[n:] if listing.test_files else None
    _, dtype = volume_header(both[0])
    return _raw(listing, np.ascontiguousarray(x_all[:n]), x_test, f"volume files: {describe_values(dtype)}")
