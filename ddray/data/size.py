"""How big a data set or upload becomes in memory, estimated from headers before anything is decoded.

A 1 MB ``savez_compressed`` of zeros decodes to gigabytes, and a folder of
small PNGs with ``image_size: [4096, 4096]`` to far more: finding out by
loading is the failure. npz members carry their shape and dtype in their
first bytes, images, IDX and volume files their size in their header,
CIFAR's batches hold uint8 pixels, the synthetic generators their size in the
config; that is all these functions read.

``check_dataset_size`` is also where the torchvision sets' files are looked
for (``catalog.locate``), so that a missing MNIST or CIFAR file fails, naming
every file expected and where to get it, before Ray starts (the driver's
``check_data``) and when the REST service accepts a job.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from ddray.data.catalog import SETS, idx_header, locate
from ddray.data.images import list_image_files
from ddray.data.validation import DataError
from ddray.data.volumes import list_volume_files, volume_bytes

FLOAT_BYTES = 4  # every split is float32 once loaded


def npz_bytes(path: str | Path) -> int:
    """Bytes the arrays of an npz archive take once read (from each member's .npy header); DataError if unreadable."""
    path = Path(path)
    total = 0
    try:
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                with archive.open(info) as member:
                    version = np.lib.format.read_magic(member)
                    read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
                    shape, _, dtype = read(member, max_header_size=10_000)
                if dtype.hasobject:
                    raise DataError(f"{path.name}: array {info.filename!r} holds Python objects; store plain numeric arrays")
                total += int(np.prod(shape, dtype=np.int64)) * max(dtype.itemsize, FLOAT_BYTES)
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as err:
        raise DataError(f"{path.name}: not a readable npz archive ({err})") from None
    return total


def image_bytes(path: str | Path, resize: tuple[int, int] | None = None) -> int:
    """Bytes one image file takes as float32 (from its header; at ``resize`` when given)."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    try:
        with Image.open(path) as image:  # reads the header only
            height, width = resize or (image.height, image.width)
            return height * width * max(1, len(image.getbands())) * FLOAT_BYTES
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as err:
        raise DataError(f"{path.name}: not a readable image ({err})") from None


def dataset_bytes(cfg) -> int | None:
    """Estimated in-memory size of the data set ``cfg`` describes, or None when it cannot be told cheaply
    (an unreadable file is left to the loader, whose message names the fix)."""
    try:
        return _dataset_bytes(cfg)
    except DataError:
        return None


def _dataset_bytes(cfg) -> int | None:
    if cfg.source == "synthetic":
        return int(cfg.samples) * int(np.prod(cfg.size, dtype=np.int64)) * int(cfg.channels) * FLOAT_BYTES
    if cfg.source == "npz" and cfg.path and Path(cfg.path).is_file():
        return npz_bytes(cfg.path)
    if cfg.source == "imagefolder" and cfg.path and Path(cfg.path).is_dir():
        files = list_image_files(Path(cfg.path))
        if files:
            resize = tuple(cfg.image_size) if cfg.image_size else None
            return len(files) * image_bytes(files[0], resize)  # the loader insists on one size
    if cfg.source == "volumefolder" and cfg.path and Path(cfg.path).is_dir():
        files = list_volume_files(Path(cfg.path))
        if files:
            return len(files) * volume_bytes(files[0])  # the loader insists on one shape
    if cfg.source in SETS:
        return torchvision_set_bytes(cfg.source, cfg.path)
    return None


def torchvision_set_bytes(source: str, root) -> int:
    """Bytes of a torchvision set as float32: IDX image headers, or CIFAR's uint8 batch files x 4."""
    spec = SETS[source]
    folder = locate(source, root) / spec.folder
    if source in ("cifar10", "cifar100"):
        return sum((folder / name).stat().st_size for name in spec.train + spec.test) * FLOAT_BYTES
    total = 0
    for name in spec.train + spec.test:
        if "images" in name:
            total += int(np.prod(idx_header(folder / name), dtype=np.int64)) * FLOAT_BYTES
    return total


def check_dataset_size(cfg, limit: int) -> None:
    """DataError naming the estimate, the limit and how to lift it, when the data set would not fit;
    for mnist, fashion_mnist, kmnist, cifar10 and cifar100 also when a file is missing (listing
    the files expected under dataset.root and where to get them)."""
    if cfg.source in SETS and "://" not in str(cfg.path):  # a URI is fetched (and checked) by the driver
        locate(cfg.source, cfg.path)
    estimate = dataset_bytes(cfg)
    if estimate is not None and estimate > limit:
        raise DataError(
            f"the data set would take about {estimate / 2**30:.1f} GiB in memory, over the limit of "
            f"{limit / 2**30:.1f} GiB (DDRAY_MAX_DATASET_BYTES lifts it); use dataset.limit, a smaller "
            f"image_size or fewer samples"
        )
