"""Image files (listing, header probing, decoding) and the one bilinear resize.

A leaf of ``ddray.data``: the imagefolder loader, predict inputs, the size
estimate and ``Preprocessing`` all use these, so images reach the model the
same way whichever path read them. Pillow and torch are imported only when
used, so importing ``ddray.data`` stays cheap.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from ddray.data.validation import DataError, scale_values

# torchvision.datasets.folder.IMG_EXTENSIONS (ImageFolder's list), copied so that
# importing ddray.data does not import torchvision (~1.5 s); a test keeps them equal.
IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")

GRAYSCALE_MODES = {"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"}
SIXTEEN_BIT_MODES = {"I;16", "I;16B", "I;16L", "I;16N"}  # read as uint16 (/ 65535), not clipped to 8 bits
IMAGE_VALUES = "image files: 8-bit / 255, 16-bit grayscale / 65535"

CHUNK_SAMPLES = 4096  # samples per chunk when resizing / computing channel statistics


def resize_images(x: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """Bilinear resize of (N, C, H, W) float32 to ``size`` (H, W), antialiased when shrinking."""
    import torch
    import torch.nn.functional as F

    size = tuple(int(s) for s in size)
    if x.ndim != 4:
        raise DataError(f"only 2D images (N, C, H, W) can be resized; got shape {tuple(x.shape)}")
    if tuple(x.shape[2:]) == size:
        return np.ascontiguousarray(x, dtype=np.float32)
    shrink = size[0] < x.shape[2] or size[1] < x.shape[3]
    out = np.empty((x.shape[0], x.shape[1], *size), dtype=np.float32)
    for start in range(0, len(x), CHUNK_SAMPLES):
        chunk = torch.from_numpy(np.ascontiguousarray(x[start : start + CHUNK_SAMPLES], dtype=np.float32))
        resized = F.interpolate(chunk, size=size, mode="bilinear", align_corners=False, antialias=shrink)
        out[start : start + len(chunk)] = resized.numpy()
    return out


def is_image_file(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def list_image_files(folder: Path) -> list[Path]:
    """Image files under ``folder`` (recursive, hidden entries skipped), sorted."""
    found = []
    for p in folder.rglob("*"):
        rel = p.relative_to(folder)
        if any(part.startswith(".") for part in rel.parts):
            continue
        if is_image_file(p):
            found.append(p)
    return sorted(found)


def _open_image(path: Path):
    from PIL import Image, UnidentifiedImageError

    try:
        return Image.open(path)
    except (UnidentifiedImageError, OSError) as err:
        raise DataError(f"{path}: cannot read image file ({err}); remove or replace it") from None


def probe_images(paths: Sequence[Path]) -> tuple[bool, set[tuple[int, int]], dict[tuple[int, int], Path]]:
    """Read only the headers: (all grayscale?, set of (H, W) sizes, one example file per size)."""
    gray = True
    examples: dict[tuple[int, int], Path] = {}
    for p in paths:
        with _open_image(p) as im:
            gray = gray and im.mode in GRAYSCALE_MODES
            hw = (im.height, im.width)
            examples.setdefault(hw, p)
    return gray, set(examples), examples


def read_images(paths: Sequence[Path], *, mode: str, size: tuple[int, int] | None) -> np.ndarray:
    """Images as float32 (N, C, H, W) in [0, 1]; converted to ``mode`` ('L' or 'RGB');
    resized to ``size`` (H, W) with the same bilinear resize as ``Preprocessing``.

    Pillow decodes each file to a uint8 array (uint16 for 16-bit grayscale into an 'L'
    model), which ``scale_values`` scales exactly like an npz array of that dtype."""
    channels = 1 if mode == "L" else 3
    arrays = []
    for p in paths:
        with _open_image(p) as im:
            try:
                if mode == "L" and im.mode in SIXTEEN_BIT_MODES:
                    stored = np.asarray(im)  # uint16: convert('L') would clip every value above 255
                else:
                    stored = np.asarray(im.convert(mode))
            except OSError as err:
                raise DataError(f"{p}: cannot decode image file ({err}); remove or replace it") from None
        a = scale_values(stored[None, None] if stored.ndim == 2 else np.moveaxis(stored, -1, 0)[None], origin=str(p))[0]
        if size is not None and a.shape[1:] != tuple(size):
            a = resize_images(a[None], size)[0]
        arrays.append(a)
    if not arrays:
        return np.zeros((0, channels, *(size or (1, 1))), dtype=np.float32)
    return np.ascontiguousarray(np.stack(arrays), dtype=np.float32)
