"""Where torchvision expects the files of MNIST, Fashion-MNIST, KMNIST, CIFAR-10 and CIFAR-100.

The facts (folder, file names, where to get them) are copied from
``torchvision.datasets`` 0.29 so that the cheap checks before Ray starts
(``size.check_dataset_size``) need not import torchvision (~1.5 s); a test keeps
them equal to torchvision's class attributes. ddray never downloads: when a file
is missing, :func:`locate` raises a DataError listing every file expected under
``dataset.root`` and where to get it (docs/data.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from ddray.data.validation import DataError, require_path


@dataclass(frozen=True)
class TorchvisionSet:
    source: str  # dataset.source
    torchvision_class: str  # torchvision.datasets.<this>
    folder: str  # under torchvision's root, where the files lie
    train: tuple[str, ...]
    test: tuple[str, ...]
    meta: tuple[str, ...]  # other files the loader needs (CIFAR's class names)
    url: str  # where to get the files
    how: str  # how to turn what the url gives into the files; {root} and {folder} are filled in

    @property
    def files(self) -> tuple[str, ...]:
        return self.train + self.test + self.meta


def _idx_set(source: str, cls: str, url: str) -> TorchvisionSet:
    names = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
    return TorchvisionSet(
        source=source,
        torchvision_class=cls,
        folder=f"{cls}/raw",
        train=names[:2],
        test=names[2:],
        meta=(),
        url=url,
        how=f"download {', '.join(n + '.gz' for n in names)} from {url} and gunzip them into {{folder}}/",
    )


SETS: dict[str, TorchvisionSet] = {
    "mnist": _idx_set("mnist", "MNIST", "https://ossci-datasets.s3.amazonaws.com/mnist/"),
    "fashion_mnist": _idx_set(
        "fashion_mnist", "FashionMNIST", "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
    ),
    "kmnist": _idx_set("kmnist", "KMNIST", "http://codh.rois.ac.jp/kmnist/dataset/kmnist/"),
    "cifar10": TorchvisionSet(
        source="cifar10",
        torchvision_class="CIFAR10",
        folder="cifar-10-batches-py",
        train=tuple(f"data_batch_{i}" for i in range(1, 6)),
        test=("test_batch",),
        meta=("batches.meta",),
        url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        how="download {url} and extract it into {root}/ (tar xzf ... -C {root})",
    ),
    "cifar100": TorchvisionSet(
        source="cifar100",
        torchvision_class="CIFAR100",
        folder="cifar-100-python",
        train=("train",),
        test=("test",),
        meta=("meta",),
        url="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        how="download {url} and extract it into {root}/ (tar xzf ... -C {root})",
    ),
}


def _candidates(root: Path, folder: str) -> list[Path]:
    """torchvision roots that ``root`` may mean: itself, or an ancestor when ``root`` already
    names the set's folder (``/data/MNIST``, ``/data/MNIST/raw``, ``/data/cifar-10-batches-py``)."""
    parts = PurePosixPath(folder).parts
    found = [root]
    for k in range(1, len(parts) + 1):
        if root.parts[-k:] == parts[:k]:
            found.append(root.parents[k - 1])
    return found


def locate(source: str, root: str | Path | None) -> Path:
    """torchvision's ``root`` for the set: the folder holding ``<folder>/<files>``; DataError listing
    every missing file and where to get it when they are not all there."""
    spec = SETS[source]
    given = require_path(root, field="dataset.root", what="dataset root")
    if not given.is_dir():
        raise DataError(f"{given}: source '{source}' needs a folder (dataset.root), not a file; {_expected(spec, given)}")
    for candidate in _candidates(given, spec.folder):
        if all((candidate / spec.folder / name).is_file() for name in spec.files):
            return candidate
    target = given / spec.folder
    missing = [name for name in spec.files if not (target / name).is_file()]
    packed = [f"{name}.gz" for name in missing if (target / f"{name}.gz").is_file()]
    hint = f"; found {', '.join(packed)}: decompress them there (gunzip -k)" if packed else ""
    return _raise_missing(spec, given, missing, hint)


def _expected(spec: TorchvisionSet, root: Path) -> str:
    return f"ddray never downloads: {spec.how.format(root=root, folder=root / spec.folder, url=spec.url)}"


def _raise_missing(spec: TorchvisionSet, root: Path, missing: list[str], hint: str) -> Path:
    target = root / spec.folder
    which = "none of its files is there" if len(missing) == len(spec.files) else f"{len(missing)} of its files are missing"
    raise DataError(
        f"{root}: source '{spec.source}' reads torchvision.datasets.{spec.torchvision_class}'s files under "
        f"dataset.root and {which}: expected {', '.join(str(target / n) for n in missing)}{hint}; {_expected(spec, root)}"
    )


def idx_header(path: Path) -> tuple[int, ...]:
    """The shape an IDX file (MNIST's format) declares in its first bytes; DataError if it is not IDX."""
    with open(path, "rb") as fh:
        head = fh.read(4)
        if len(head) < 4 or head[:2] != b"\0\0" or not 1 <= head[3] <= 4:
            raise DataError(f"{path}: not an IDX file (bad magic number); re-extract it from the downloaded .gz")
        dims = fh.read(4 * head[3])
    if len(dims) < 4 * head[3]:
        raise DataError(f"{path}: IDX header is truncated; re-extract it from the downloaded .gz")
    return tuple(int.from_bytes(dims[i : i + 4], "big") for i in range(0, len(dims), 4))
