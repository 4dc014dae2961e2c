"""The ``dataset`` and ``decomposition`` sections: what the images are and how each is cut."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import AliasChoices, Field, field_validator, model_validator

from ddray.config.section import Section


FOLDER_SOURCES = ("mnist", "fashion_mnist", "kmnist", "cifar10", "cifar100", "imagefolder", "volumefolder")


class DatasetConfig(Section):
    """Where the images come from (docs/data.md). Paths are read on the driver only.

    ``root`` and ``path`` are one setting under two spellings: ``root`` (torchvision's word)
    for the folder of a folder source, ``path`` for the npz file; either is accepted for any
    source, giving both is an error. It is stored (and dumped) as ``path``.
    """

    source: Literal[
        "digits", "npz", "synthetic", "mnist", "fashion_mnist", "kmnist", "cifar10", "cifar100", "imagefolder",
        "volumefolder",
    ] = "digits"
    path: str | None = Field(
        None,
        validation_alias=AliasChoices("path", "root"),
        description="dataset.root: the folder of mnist / fashion_mnist / kmnist / cifar10 / cifar100 / imagefolder / "
        "volumefolder; dataset.path: the file of npz (one setting, two spellings)",
    )
    validation_fraction: float = Field(0.1, gt=0.0, lt=0.5)
    test_fraction: float = Field(0.2, gt=0.0, lt=0.5, description="used when the source has no test split")
    image_size: list[int] | None = Field(None, description="resize 2D images to [H, W] (not volumes)")
    limit: int | None = Field(None, gt=0, description="use only the first N samples (quick experiments)")
    # synthetic generator parameters
    kind: Literal["count", "blobs"] = "count"
    samples: int = Field(600, gt=0)
    size: list[int] = Field(default_factory=lambda: [16, 16], description="[H, W] or [D, H, W] (synthetic)")
    cells: list[int] | None = Field(None, description="cells of the 'count' generator; default: the decomposition grid")
    classes: int = Field(4, ge=2, description="number of classes (synthetic 'blobs')")
    channels: int = Field(1, ge=1, le=16)

    @model_validator(mode="before")
    @classmethod
    def _one_spelling(cls, data: Any) -> Any:
        if isinstance(data, dict) and "root" in data and "path" in data:
            raise ValueError("dataset.root and dataset.path are one setting; give only one (root for a folder, path for a file)")
        return data

    @property
    def path_key(self) -> str:
        """The key messages name: dataset.root for folder sources, dataset.path for a file."""
        return "dataset.root" if self.source in FOLDER_SOURCES else "dataset.path"

    @model_validator(mode="after")
    def _path_needed(self) -> "DatasetConfig":
        if self.source in (*FOLDER_SOURCES, "npz") and not self.path:
            what = "the .npz file" if self.source == "npz" else "the data folder"
            raise ValueError(f"{self.path_key} is required for source '{self.source}': {what} (see docs/data.md)")
        if len(self.size) not in (2, 3):
            raise ValueError("dataset.size must be [H, W] or [D, H, W]")
        return self


class DecompositionConfig(Section):
    """How every input is cut into subimages (2D) or subvolumes (3D)."""

    grid: list[int] = Field(default_factory=lambda: [2, 2], description="[rows, cols] or [d, h, w]")
    overlap: int = Field(0, ge=0, description="pixels shared by neighbouring subdomains")

    @field_validator("grid")
    @classmethod
    def _grid_shape(cls, grid: list[int]) -> list[int]:
        if len(grid) not in (2, 3):
            raise ValueError("grid must have 2 entries [rows, cols] for images or 3 [d, h, w] for volumes")
        if any(g < 1 for g in grid):
            raise ValueError("every grid entry must be >= 1")
        return grid

    @property
    def num_subdomains(self) -> int:
        n = 1
        for g in self.grid:
            n *= g
        return n
