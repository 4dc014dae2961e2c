"""One loader per ``dataset.source``; each returns validated raw arrays.

Raw means: float32 (N, C, *spatial) on the value scale of the preprocessing
contract (docs/preprocessing.md), not yet resized or normalised. Every stored
array goes through ``validation.scale_values``: bool and integers of up to 16
bits are divided by their dtype's maximum (uint8 / 255, uint16 / 65535), floats
and wider integers are used as stored. npz arrays, CIFAR-10 pixels and image
files (decoded by Pillow to uint8, or uint16 for 16-bit grayscale) all follow
it, so the same 8-bit image is the same array whichever format carried it.
digits (sklearn's 0..16 values) are divided by 16. Nothing is ever downloaded.
"""

from __future__ import annotations

import codecs
import math
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ddray.config import DatasetConfig
from ddray.data import synthetic
from ddray.data.validation import (
    DataError,
    check_image_size,
    check_label_range,
    check_labels,
    check_same_layout,
    describe_values,
    require_path,
    scale_values,
    value_divisor,
)

# torchvision.datasets.folder.IMG_EXTENSIONS (ImageFolder's list), copied so that
# importing ddray.data does not import torchvision (~1.5 s); a test keeps them equal.
IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")

GRAYSCALE_MODES = {"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"}
SIXTEEN_BIT_MODES = {"I;16", "I;16B", "I;16L", "I;16N"}  # read as uint16 (/ 65535), not clipped to 8 bits
IMAGE_VALUES = "image files: 8-bit / 255, 16-bit grayscale / 65535"


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


# ---------------------------------------------------------------- image files


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
    from ddray.data.dataset import resize_images

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


def _class_dirs(folder: Path) -> list[Path]:
    return sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))


def _scan_class_tree(root: Path, classes: list[str] | None = None) -> tuple[list[Path], list[int], list[str]]:
    """(files, labels, class names) of a class-per-folder tree like torchvision's ImageFolder."""
    dirs = _class_dirs(root)
    if not dirs:
        loose = [p for p in root.iterdir() if is_image_file(p)]
        extra = (
            f"; found {len(loose)} image files directly in it: move them into one subfolder per class"
            if loose
            else ""
        )
        raise DataError(
            f"{root}: no class folders; source 'imagefolder' expects one subfolder per class "
            f"(root/cat/img1.png, root/dog/img2.png ...){extra}"
        )
    if classes is None:
        classes = [d.name for d in dirs]
        index = {c: i for i, c in enumerate(classes)}
        strict = True
    else:
        index = {c: i for i, c in enumerate(classes)}
        strict = False
    files: list[Path] = []
    labels: list[int] = []
    for d in dirs:
        if d.name not in index:
            raise DataError(
                f"{d}: class '{d.name}' does not exist in the training split; training classes: {', '.join(classes)}"
            )
        found = list_image_files(d)
        if not found and strict:
            raise DataError(
                f"{d}: class folder has no image files ({', '.join(IMAGE_EXTENSIONS)}); add images or remove the folder"
            )
        files += found
        labels += [index[d.name]] * len(found)
    return files, labels, classes


def _round_robin(labels: Sequence[int]) -> np.ndarray:
    """Order that interleaves classes (1st of each class, 2nd of each class, ...),
    so ``dataset.limit`` keeps every class of a class-sorted folder tree."""
    labels = np.asarray(labels)
    rank = np.zeros(len(labels), dtype=np.int64)
    for c in np.unique(labels):
        where = np.flatnonzero(labels == c)
        rank[where] = np.arange(len(where))
    return np.lexsort((labels, rank))


def load_imagefolder(cfg: DatasetConfig, *, seed: int, grid: Sequence[int] | None) -> RawData:
    root = require_path(cfg.path)
    if not root.is_dir():
        raise DataError(
            f"{root}: source 'imagefolder' needs a folder with one subfolder per class "
            f"(root/cat/img1.png ...), not a file"
        )
    image_size = check_image_size(cfg.image_size)
    train_dir, test_dir = root / "train", root / "test"
    split_layout = train_dir.is_dir() and test_dir.is_dir() and bool(_class_dirs(train_dir))
    if split_layout:
        files, labels, classes = _scan_class_tree(train_dir)
        test_files, test_labels, _ = _scan_class_tree(test_dir, classes)
    else:
        files, labels, classes = _scan_class_tree(root)
        test_files, test_labels = [], []
    if not files:
        raise DataError(f"{root}: no image files found ({', '.join(IMAGE_EXTENSIONS)})")
    if split_layout and not test_files:
        raise DataError(f"{test_dir}: the test split has no image files; add images or remove the 'test' folder")

    order = _round_robin(labels)
    files, labels = [files[i] for i in order], [labels[i] for i in order]
    if cfg.limit:
        files, labels = files[: cfg.limit], labels[: cfg.limit]
        test_files, test_labels = test_files[: cfg.limit], test_labels[: cfg.limit]

    all_files = files + test_files
    gray, sizes, examples = probe_images(all_files)
    if image_size is None and len(sizes) > 1:
        (a, pa), (b, pb) = list(examples.items())[:2]
        raise DataError(
            f"{root}: images have different sizes ({pa} is {a[0]}x{a[1]}, {pb} is {b[0]}x{b[1]}, "
            f"{len(sizes)} sizes in all); set dataset.image_size: [H, W] to resize them"
        )
    mode = "L" if gray else "RGB"
    x = read_images(files, mode=mode, size=image_size)
    x_test = read_images(test_files, mode=mode, size=image_size) if test_files else None
    return RawData(
        x=x,
        y=np.asarray(labels, dtype=np.int64),
        num_classes=len(classes),
        class_names=list(classes),
        origin=str(root),
        x_test=x_test,
        y_test=np.asarray(test_labels, dtype=np.int64) if test_files else None,
        values=IMAGE_VALUES,
    )


# ---------------------------------------------------------------------- digits


def load_digits(cfg: DatasetConfig, *, seed: int, grid: Sequence[int] | None) -> RawData:
    """sklearn's bundled 8x8 handwritten digits (1797 samples, values 0..16), scaled to [0, 1];
    upsampled to dataset.image_size or 32x32 by ``load_dataset``."""
    from sklearn.datasets import load_digits as sk_load_digits

    bunch = sk_load_digits()
    x = (bunch.images.astype(np.float32) / 16.0)[:, None]
    y = bunch.target.astype(np.int64)
    if cfg.limit:
        x, y = x[: cfg.limit], y[: cfg.limit]
    return RawData(
        x=np.ascontiguousarray(x),
        y=y,
        num_classes=10,
        class_names=[str(i) for i in range(10)],
        origin="digits (sklearn)",
        default_resize=[32, 32],
        values="digits 0..16 / 16",
    )


# ------------------------------------------------------------------------- npz


def _npz_array(f, name: str, origin: str) -> np.ndarray:
    try:
        return f[name]
    except ValueError as err:  # object arrays need pickle, which ddray never enables
        raise DataError(
            f"{origin}: array '{name}' cannot be read without pickle ({err}); store plain numeric "
            f"arrays (object arrays, e.g. ragged images, are not supported)"
        ) from None


def load_npz(cfg: DatasetConfig, *, seed: int, grid: Sequence[int] | None) -> RawData:
    path = require_path(cfg.path)
    origin = str(path)
    if path.is_dir():
        raise DataError(f"{origin}: is a folder; source 'npz' needs a .npz file (for image folders use source: imagefolder)")
    try:
        f = np.load(path, allow_pickle=False)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as err:
        raise DataError(
            f"{origin}: not a readable .npz file ({err}); save with numpy.savez(path, x=images, y=labels)"
        ) from None
    if not isinstance(f, np.lib.npyio.NpzFile):
        raise DataError(
            f"{origin}: holds a single array, not an .npz archive; save with numpy.savez(path, x=images, y=labels)"
        )
    with f:
        present = list(f.files)
        for needed in ("x", "y"):
            if needed not in present:
                raise DataError(
                    f"missing array '{needed}' in {origin}; arrays present: {', '.join(present) or '(none)'}; "
                    f"save with numpy.savez(path, x=images, y=labels)"
                )
        if ("x_test" in present) != ("y_test" in present):
            have, lack = ("x_test", "y_test") if "x_test" in present else ("y_test", "x_test")
            raise DataError(f"missing array '{lack}' in {origin}: '{have}' is present; give both or neither")
        x_raw, y_raw = _npz_array(f, "x", origin), _npz_array(f, "y", origin)
        has_test = "x_test" in present
        xt_raw = _npz_array(f, "x_test", origin) if has_test else None
        yt_raw = _npz_array(f, "y_test", origin) if has_test else None
        names_raw = _npz_array(f, "class_names", origin) if "class_names" in present else None

    # labels first (cheap): num_classes comes from all labels, before any limit
    x_shape_n = x_raw.shape[0] if x_raw.ndim else 0
    x = scale_values(x_raw[: cfg.limit] if cfg.limit and x_raw.ndim else x_raw, origin=origin, name="x")
    y = check_labels(y_raw, origin=origin, n=x_shape_n, name="y")
    x_test = y_test = None
    if has_test:
        if value_divisor(xt_raw.dtype) != value_divisor(x_raw.dtype):
            raise DataError(
                f"{origin}: 'x' is {x_raw.dtype} ({describe_values(x_raw.dtype)}) but 'x_test' is {xt_raw.dtype} "
                f"({describe_values(xt_raw.dtype)}), so they would reach the model on different scales; store both "
                f"with the same dtype (see docs/preprocessing.md)"
            )
        x_test = scale_values(xt_raw[: cfg.limit] if cfg.limit and xt_raw.ndim else xt_raw, origin=origin, name="x_test")
        y_test = check_labels(yt_raw, origin=origin, n=xt_raw.shape[0], name="y_test", x_name="x_test")
        check_same_layout(x_test, x, origin=origin, name="x_test")

    labels_max = int(max(y.max(), y_test.max() if y_test is not None else 0))
    if names_raw is not None:
        if names_raw.ndim != 1 or names_raw.dtype.kind not in "USiu":
            raise DataError(
                f"{origin}: 'class_names' must be a 1-D array of strings; got dtype {names_raw.dtype} "
                f"shape {tuple(names_raw.shape)}"
            )
        class_names = [n.decode() if isinstance(n, bytes) else str(n) for n in names_raw.tolist()]
        num_classes = len(class_names)
        why = f" ('class_names' lists {num_classes} classes)"
    else:
        num_classes = labels_max + 1
        class_names = [str(i) for i in range(num_classes)]
        why = ""
    check_label_range(y, num_classes, origin=origin, name="y", why=why)
    if y_test is not None:
        check_label_range(y_test, num_classes, origin=origin, name="y_test", why=why)
    if num_classes < 2:
        raise DataError(f"{origin}: all labels are {labels_max}; classification needs at least 2 classes")
    if cfg.limit:
        y = y[: cfg.limit]
        y_test = y_test[: cfg.limit] if y_test is not None else None
    return RawData(
        x=x, y=y, num_classes=num_classes, class_names=class_names, origin=origin, x_test=x_test, y_test=y_test,
        values=describe_values(x_raw.dtype),
    )


# --------------------------------------------------------------------- cifar10

CIFAR_FOLDER = "cifar-10-batches-py"
CIFAR_TRAIN = [f"data_batch_{i}" for i in range(1, 6)]
CIFAR_TEST = "test_batch"
CIFAR_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def _safe_globals() -> dict[tuple[str, str], object]:
    """The only callables a CIFAR pickle needs: numpy array reconstruction (any numpy
    version, pickle protocol 2..5) and _codecs.encode (Python-3 bytes in protocol 2)."""
    reconstruct = np.ndarray((0,)).__reduce__()[0]
    scalar = np.float64(0).__reduce__()[0]
    frombuffer = np.arange(2).__reduce_ex__(5)[0]
    allowed: dict[tuple[str, str], object] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): codecs.encode,
    }
    for core in ("numpy.core", "numpy._core"):
        allowed[(f"{core}.multiarray", "_reconstruct")] = reconstruct
        allowed[(f"{core}.multiarray", "scalar")] = scalar
        allowed[(f"{core}.numeric", "_frombuffer")] = frombuffer
    return allowed


class _CifarUnpickler(pickle.Unpickler):
    """Refuses every global except numpy arrays: a pickle can run arbitrary code,
    and dataset paths may come from REST requests."""

    _allowed = _safe_globals()

    def find_class(self, module: str, name: str):  # noqa: D401
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}") from None


def _read_cifar_pickle(path: Path) -> dict:
    try:
        with open(path, "rb") as fh:
            entry = _CifarUnpickler(fh, encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, OSError, ValueError, TypeError, AttributeError) as err:
        raise DataError(f"{path}: not a CIFAR-10 python pickle ({err}); re-extract cifar-10-python.tar.gz") from None
    if not isinstance(entry, dict):
        raise DataError(f"{path}: not a CIFAR-10 python pickle (holds {type(entry).__name__}, expected dict)")
    return {(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in entry.items()}


def _read_cifar_batch(path: Path, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    entry = _read_cifar_pickle(path)
    if "data" not in entry or "labels" not in entry:
        raise DataError(f"{path}: CIFAR-10 batch lacks 'data' or 'labels'; keys present: {sorted(map(str, entry))}")
    data = np.asarray(entry["data"])
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or data.dtype.kind not in "iu":
        raise DataError(
            f"{path}: CIFAR-10 'data' must be uint8 shaped (n, 3072); got {data.dtype} {tuple(data.shape)}"
        )
    origin = str(path)
    if data.dtype != np.uint8:  # CIFAR-10 pixels are 8-bit by definition, however the pickle stored them
        if data.size and (data.min() < 0 or data.max() > 255):
            raise DataError(f"{path}: CIFAR-10 'data' must hold 8-bit pixels 0..255; found values outside that range")
        data = data.astype(np.uint8)
    x = scale_values(data.reshape(-1, 3, 32, 32), origin=origin, name="data")  # uint8 / 255, like a PNG of it
    y = check_labels(np.asarray(entry["labels"]), origin=origin, n=len(x), name="labels", x_name="data")
    check_label_range(y, num_classes, origin=origin, name="labels")
    return x, y


def find_cifar_folder(path: Path) -> Path:
    for folder in (path / CIFAR_FOLDER, path):
        if all((folder / name).is_file() for name in CIFAR_TRAIN + [CIFAR_TEST]):
            return folder
    raise DataError(
        f"no CIFAR-10 python batches under {path}: expected {path}/{CIFAR_FOLDER}/data_batch_1..5 and "
        f"test_batch (download=False: ddray never downloads)"
    )


def load_cifar10(cfg: DatasetConfig, *, seed: int, grid: Sequence[int] | None) -> RawData:
    """The python-pickle CIFAR-10 folder (50000 train / 10000 test, 3x32x32).

    The pickles are read here (same format as torchvision.datasets.CIFAR10)
    rather than via torchvision, because torchvision checks the md5 of every
    batch file and rejects anything but the official files, e.g. the small
    fixtures of the tests; reading them ourselves also lets ``limit`` skip
    batches and refuses pickled code.
    """
    path = require_path(cfg.path)
    if not path.is_dir():
        raise DataError(f"{path}: source 'cifar10' needs the folder holding {CIFAR_FOLDER}, not a file")
    folder = find_cifar_folder(path)
    class_names = CIFAR_CLASSES
    meta_path = folder / "batches.meta"
    if meta_path.is_file():
        meta = _read_cifar_pickle(meta_path)
        names = meta.get("label_names")
        if names:
            class_names = [n.decode() if isinstance(n, bytes) else str(n) for n in names]
    num_classes = len(class_names)
    xs, ys, total = [], [], 0
    for name in CIFAR_TRAIN:
        if cfg.limit and total >= cfg.limit:
            break
        x, y = _read_cifar_batch(folder / name, num_classes)
        xs.append(x)
        ys.append(y)
        total += len(x)
    x_test, y_test = _read_cifar_batch(folder / CIFAR_TEST, num_classes)
    x, y = np.concatenate(xs), np.concatenate(ys)
    if cfg.limit:
        x, y = x[: cfg.limit], y[: cfg.limit]
        x_test, y_test = x_test[: cfg.limit], y_test[: cfg.limit]
    return RawData(
        x=np.ascontiguousarray(x),
        y=y,
        num_classes=num_classes,
        class_names=class_names,
        origin=str(folder),
        x_test=np.ascontiguousarray(x_test),
        y_test=y_test,
        values="uint8 / 255",
    )


# ------------------------------------------------------------------- synthetic


def load_synthetic(cfg: DatasetConfig, *, seed: int, grid: Sequence[int] | None) -> RawData:
    size = list(cfg.size)
    if cfg.kind == "count":
        if cfg.cells is not None:
            cells = list(cfg.cells)
        elif grid is not None and len(grid) == len(size):
            cells = list(grid)
        else:
            cells = [2] * len(size)
        x, y = synthetic.generate_count(size, cells, cfg.samples, cfg.channels, seed)
        num_classes = math.prod(cells) + 1
        origin = f"synthetic 'count' data {size} with cells {cells}"
    else:
        x, y = synthetic.generate_blobs(size, cfg.classes, cfg.samples, cfg.channels, seed)
        num_classes = cfg.classes
        origin = f"synthetic 'blobs' data {size}"
    if cfg.limit:
        x, y = x[: cfg.limit], y[: cfg.limit]
    return RawData(x=x, y=y, num_classes=num_classes, class_names=[str(i) for i in range(num_classes)], origin=origin)


SOURCES: dict[str, Callable[..., RawData]] = {
    "digits": load_digits,
    "npz": load_npz,
    "imagefolder": load_imagefolder,
    "cifar10": load_cifar10,
    "synthetic": load_synthetic,
}
