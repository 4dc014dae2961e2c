"""3D volume files: ``.npy`` (numpy, never unpickled) and NIfTI ``.nii`` / ``.nii.gz`` (nibabel).

A leaf of ``ddray.data`` like ``images``: the volumefolder source, the size
estimate and predict inputs read volumes only through these functions, so a
volume reaches the model the same way in training and in ``ddray predict``.

Axes: a 3-D array is one channel (D, H, W); a 4-D ``.npy`` is channels first
(C, D, H, W); a 4-D NIfTI is (i, j, k, c) as nibabel returns it, its last axis
the channels. NIfTI voxel axes are taken as stored (i, j, k) -> (D, H, W),
without reorientation. Values follow the value rule (``scale_values``): a NIfTI
with a scale factor (scl_slope) gives floats, used as stored, otherwise its
stored integers are divided by their dtype's maximum like an npz of them.
The shape is read from the header first: nothing over ``DDRAY_MAX_IMAGE_PIXELS``
voxels is decompressed.
"""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import Sequence

import numpy as np

from ddray.data.validation import DataError, scale_values, value_divisor
from ddray.limits import Limits, env_name

VOLUME_EXTENSIONS: tuple[str, ...] = (".npy", ".nii", ".nii.gz")
FLOAT_BYTES = 4


def is_volume_file(path: Path) -> bool:
    return path.is_file() and path.name.lower().endswith(VOLUME_EXTENSIONS) and not path.name.startswith(".")


def list_volume_files(folder: Path) -> list[Path]:
    """Volume files under ``folder`` (recursive, hidden entries skipped), sorted."""
    return sorted(
        p for p in folder.rglob("*")
        if is_volume_file(p) and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )


def _is_npy(path: Path) -> bool:
    return path.name.lower().endswith(".npy")


def _nifti(path: Path):
    """The NIfTI-1 or NIfTI-2 image (header read, data not yet); nothing else nibabel can open."""
    import nibabel as nib
    from nibabel.filebasedimages import ImageFileError
    from nibabel.spatialimages import HeaderDataError
    from nibabel.wrapstruct import WrapStructError

    errors = []
    for cls in (nib.Nifti1Image, nib.Nifti2Image):
        try:
            return cls.from_filename(str(path), mmap=False)
        except (ImageFileError, HeaderDataError, WrapStructError, OSError, EOFError, ValueError, zlib.error) as err:
            errors.append(err)
    raise DataError(f"{path}: not a readable NIfTI file ({errors[0]}); remove or replace it") from None


def _layout(shape: Sequence[int], path: Path, *, channels_last: bool) -> tuple[int, ...]:
    """(C, D, H, W) of a stored volume shape."""
    shape = tuple(int(s) for s in shape)
    if len(shape) == 3:
        return (1, *shape)
    if len(shape) == 4:
        if channels_last:
            return (shape[3], *shape[:3])
        if shape[-1] in (1, 3, 4) and shape[0] > 4:
            raise DataError(
                f"{path}: shape {shape} looks channels-last; .npy volumes are (D, H, W) or channels first "
                f"(C, D, H, W): save np.moveaxis(v, -1, 0)"
            )
        return shape
    raise DataError(f"{path}: a volume must have 3 axes (D, H, W) or 4 with channels; got shape {shape}")


def volume_header(path: Path) -> tuple[tuple[int, ...], np.dtype]:
    """((C, D, H, W), stored dtype) from the file's header only; DataError if unreadable or too large."""
    if _is_npy(path):
        try:
            with open(path, "rb") as fh:
                version = np.lib.format.read_magic(fh)
                read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
                shape, fortran, dtype = read(fh, max_header_size=10_000)
        except (ValueError, OSError, EOFError) as err:
            raise DataError(f"{path}: not a readable .npy file ({err}); save with numpy.save(path, volume)") from None
        if dtype.hasobject:
            raise DataError(f"{path}: holds Python objects; store a plain numeric array (ddray never unpickles)")
        layout = _layout(shape, path, channels_last=False)
    else:
        image = _nifti(path)
        layout = _layout(image.shape, path, channels_last=True)
        dtype = np.dtype(image.dataobj.dtype) if not _has_scaling(image) else np.dtype(np.float32)
    voxels = int(np.prod(layout[1:], dtype=np.int64))
    limit = Limits().image_pixels
    if voxels > limit:
        raise DataError(
            f"{path}: {voxels} voxels {layout[1:]} is above the limit {limit} (set {env_name('image_pixels')} to lift it)"
        )
    return layout, dtype


def _has_scaling(image) -> bool:
    """Whether nibabel applies scl_slope / scl_inter (then the values come out as floats)."""
    proxy = image.dataobj  # nibabel moves scl_slope / scl_inter from the header to the proxy
    return float(getattr(proxy, "slope", 1.0)) != 1.0 or float(getattr(proxy, "inter", 0.0)) != 0.0


def read_volume(path: Path) -> np.ndarray:
    """One volume as float32 (C, D, H, W) on the value scale (``scale_values``)."""
    layout, _ = volume_header(path)
    try:
        if _is_npy(path):
            stored = np.load(path, allow_pickle=False)
        else:
            stored = np.asanyarray(_nifti(path).dataobj)
            if stored.ndim == 4:
                stored = np.moveaxis(stored, -1, 0)
    except (ValueError, OSError, EOFError, zlib.error) as err:
        raise DataError(f"{path}: cannot read the volume ({err}); remove or replace it") from None
    return scale_values(np.ascontiguousarray(stored).reshape(1, *layout), origin=str(path), name="volume")[0]


def read_volumes(paths: Sequence[Path], *, origin: str) -> np.ndarray:
    """Volumes as float32 (N, C, D, H, W); every file must have the first one's shape and value scale
    (DataError naming the file that differs and how to fix it)."""
    if not paths:
        raise DataError(f"{origin}: no volume files ({', '.join(VOLUME_EXTENSIONS)})")
    first = Path(paths[0])
    ref_layout, ref_dtype = volume_header(first)
    for p in paths[1:]:
        layout, dtype = volume_header(Path(p))
        if layout != ref_layout:
            raise DataError(
                f"{p}: volume is {_shape_text(layout)} but {first} is {_shape_text(ref_layout)}; all volumes of a data "
                f"set must have one shape and channel count: resample, crop or pad them to one shape (e.g. "
                f"scipy.ndimage.zoom, nibabel.processing.conform)"
            )
        if value_divisor(dtype) != value_divisor(ref_dtype):
            raise DataError(
                f"{p}: stored as {dtype} but {first} as {ref_dtype}, so they would reach the model on different "
                f"scales (docs/preprocessing.md); store every volume with the same dtype"
            )
    out = np.empty((len(paths), *ref_layout), dtype=np.float32)
    for i, p in enumerate(paths):
        out[i] = read_volume(Path(p))
    return out


def _shape_text(layout: tuple[int, ...]) -> str:
    return f"{'x'.join(map(str, layout[1:]))} with {layout[0]} channel{'s' if layout[0] != 1 else ''}"


def volume_bytes(path: Path) -> int:
    """Bytes one volume takes as float32, from its header."""
    layout, _ = volume_header(path)
    return int(np.prod(layout, dtype=np.int64)) * FLOAT_BYTES
