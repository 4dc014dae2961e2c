"""Cutting images (2D) and volumes (3D) into overlapping subdomains.

Sizing rule, per axis of length ``L`` cut into ``n`` parts with ``overlap`` o:

1. Core boundaries are ``c_i = floor(i * L / n)`` for ``i = 0..n``; the cores
   partition the axis and, when ``n`` does not divide ``L``, the later cores
   are one pixel larger than the earlier ones.
2. Every interior edge is widened so that the two neighbours share exactly
   ``o`` pixels: the earlier tile grows by ``ceil(o / 2)``, the later one by
   ``floor(o / 2)``. Tiles at the image border do not grow outwards.

So tiles cover the image, neighbours overlap by exactly ``overlap`` pixels,
interior tiles are up to ``overlap`` pixels larger than border tiles, and the
result depends only on the shape: every call sees the same pixels.
Slicing is a view over the whole batch at once (no per-image loop).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import product
from typing import Sequence, TypeVar

MIN_TILE = 4  # smallest tile edge in pixels that the registered CNNs accept

T = TypeVar("T")


class DecompositionError(ValueError):
    """The images are too small for the requested grid/overlap."""


@dataclass(frozen=True)
class Subdomain:
    index: int
    position: tuple[int, ...]  # grid coordinates, row-major order defines ``index``
    bounds: tuple[tuple[int, int], ...]  # (start, stop) per spatial axis

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(stop - start for start, stop in self.bounds)

    def slices(self) -> tuple[slice, ...]:
        return tuple(slice(start, stop) for start, stop in self.bounds)

    def extract(self, x: T) -> T:
        """The subimage of a batch shaped (N, C, *spatial) (numpy array or torch tensor); a view."""
        return x[(Ellipsis, *self.slices())]


def axis_bounds(length: int, parts: int, overlap: int) -> list[tuple[int, int]]:
    """(start, stop) of each tile along one axis, following the module's sizing rule."""
    cores = [(i * length) // parts for i in range(parts + 1)]
    grow_before, grow_after = overlap // 2, math.ceil(overlap / 2)
    bounds = []
    for i in range(parts):
        start = cores[i] - (grow_before if i > 0 else 0)
        stop = cores[i + 1] + (grow_after if i < parts - 1 else 0)
        bounds.append((start, stop))
    return bounds


AXIS_NAMES = {2: ("height", "width"), 3: ("depth", "height", "width")}


def check_fits(spatial_shape: Sequence[int], grid: Sequence[int], overlap: int) -> None:
    """Raise DecompositionError naming the axis when the grid cannot cut this shape."""
    spatial_shape, grid = tuple(spatial_shape), tuple(grid)
    if len(spatial_shape) != len(grid):
        raise DecompositionError(
            f"inputs have {len(spatial_shape)} spatial dimensions {list(spatial_shape)} but the grid "
            f"{list(grid)} has {len(grid)}; use [rows, cols] for images and [d, h, w] for volumes"
        )
    names = AXIS_NAMES.get(len(grid), tuple(f"axis {i}" for i in range(len(grid))))
    for name, length, parts in zip(names, spatial_shape, grid):
        core = length // parts
        if core < 1 or (parts > 1 and overlap > core):
            raise DecompositionError(
                f"images of size {'x'.join(map(str, spatial_shape))} are too small for grid {list(grid)} "
                f"with overlap {overlap}: along the {name} the core tiles are {core} px, which must be at "
                f"least 1 and at least the overlap; use a smaller grid or overlap, or larger images"
            )
        smallest = min(stop - start for start, stop in axis_bounds(length, parts, overlap))
        if smallest < MIN_TILE:
            raise DecompositionError(
                f"images of size {'x'.join(map(str, spatial_shape))} are too small for grid {list(grid)}: "
                f"along the {name} a subdomain would be {smallest} px, the minimum is {MIN_TILE}; "
                f"use a smaller grid or larger images (dataset.image_size)"
            )


def decompose(spatial_shape: Sequence[int], grid: Sequence[int], overlap: int = 0) -> list[Subdomain]:
    """All subdomains of an input of ``spatial_shape`` in row-major grid order."""
    check_fits(spatial_shape, grid, overlap)
    per_axis = [axis_bounds(length, parts, overlap) for length, parts in zip(spatial_shape, grid)]
    subdomains = []
    for index, position in enumerate(product(*(range(g) for g in grid))):
        bounds = tuple(per_axis[axis][p] for axis, p in enumerate(position))
        subdomains.append(Subdomain(index=index, position=tuple(position), bounds=bounds))
    return subdomains
