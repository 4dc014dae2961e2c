"""New inputs to classify, read from an .npz, an image or volume file, or a folder of them.

They are returned as stored (not yet preprocessed); the training run's
:class:`~ddray.data.preprocessing.Preprocessing` turns them into model inputs,
so ``ddray predict``, ``TrainedRun`` and the REST service treat them alike.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ddray.data.images import IMAGE_EXTENSIONS, is_image_file, list_image_files, read_images
from ddray.data.preprocessing import Preprocessing
from ddray.data.validation import DataError, require_path
from ddray.data.volumes import VOLUME_EXTENSIONS, is_volume_file, list_volume_files, read_volumes


def read_predict_inputs(path: str | Path, preprocessing: Preprocessing) -> tuple[np.ndarray, list[str]]:
    """New inputs to classify as stored, not yet preprocessed, with one name each.

    ``path``: an .npz with array 'x' (N, C, *spatial) -> 'x' as stored (any numeric dtype),
    names 'x[0]', 'x[1]' ...; a single image file -> its file name; a folder of image files
    (recursive, sorted) -> their paths relative to the folder. Images are converted to the
    training channel count (L for 1, RGB for 3), scaled by the value rule (8-bit / 255,
    16-bit grayscale / 65535, exactly as an npz of that dtype would be) and resized to the
    training spatial shape. For a 3D model: a volume file (.npy, .nii, .nii.gz) or a folder
    of them, read as the volumefolder source reads them (never resized). ``preprocessing.prepare``
    turns either into model inputs.
    """
    p = require_path(path, field=None, what="input path")
    origin = str(p)
    if p.is_file() and p.suffix.lower() == ".npz":
        try:
            f = np.load(p, allow_pickle=False)
        except Exception as err:  # noqa: BLE001 - any unreadable file is a DataError
            raise DataError(f"{origin}: not a readable .npz file ({err}); save with numpy.savez(path, x=inputs)") from None
        if not isinstance(f, np.lib.npyio.NpzFile):
            raise DataError(f"{origin}: holds a single array; save with numpy.savez(path, x=inputs)")
        with f:
            if "x" not in f.files:
                raise DataError(
                    f"missing array 'x' in {origin}; arrays present: {', '.join(f.files) or '(none)'}; "
                    f"save with numpy.savez(path, x=inputs)"
                )
            try:
                x_raw = f["x"]
            except ValueError as err:
                raise DataError(f"{origin}: array 'x' cannot be read without pickle ({err})") from None
        n = len(x_raw) if x_raw.ndim else 0
        return x_raw, [f"x[{i}]" for i in range(n)]

    if len(preprocessing.spatial_shape) == 3 and (is_volume_file(p) or p.is_dir()):
        files = [p] if p.is_file() else list_volume_files(p)
        if not files:
            raise DataError(f"{origin}: folder has no volume files ({', '.join(VOLUME_EXTENSIONS)})")
        names = [p.name] if p.is_file() else [f.relative_to(p).as_posix() for f in files]
        return read_volumes(files, origin=origin), names  # on the value scale, like the training volumes

    if p.is_file():
        if not is_image_file(p):
            raise DataError(
                f"{origin}: unsupported input; give an .npz with array 'x', an image file "
                f"({', '.join(IMAGE_EXTENSIONS)}) or a folder of images (for a 3D model: volume files "
                f"{', '.join(VOLUME_EXTENSIONS)})"
            )
        files, names = [p], [p.name]
    else:
        files = list_image_files(p)
        if not files:
            raise DataError(f"{origin}: folder has no image files ({', '.join(IMAGE_EXTENSIONS)})")
        names = [f.relative_to(p).as_posix() for f in files]

    if len(preprocessing.spatial_shape) != 2:
        raise DataError(
            f"{origin}: the model classifies 3D volumes {preprocessing.spatial_shape}; image files cannot be "
            f"used, give an .npz with 'x' shaped (N, C, D, H, W) or volume files ({', '.join(VOLUME_EXTENSIONS)})"
        )
    modes = {1: "L", 3: "RGB"}
    if preprocessing.channels not in modes:
        raise DataError(
            f"{origin}: the model expects {preprocessing.channels} channels; image files provide 1 (L) or 3 (RGB); "
            f"give an .npz with 'x' shaped (N, {preprocessing.channels}, H, W)"
        )
    # already on the value scale (floats): prepare() uses them as they are, legacy records included
    return read_images(files, mode=modes[preprocessing.channels], size=preprocessing.spatial_shape), names


def load_predict_inputs(path: str | Path, preprocessing: Preprocessing) -> tuple[np.ndarray, list[str]]:
    """``read_predict_inputs`` then ``preprocessing.apply``: (model inputs, names)."""
    x, names = read_predict_inputs(path, preprocessing)
    return preprocessing.apply(x, origin=str(path)), names
