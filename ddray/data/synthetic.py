"""Seeded synthetic images (2D) and volumes (3D), generated vectorised.

``count``: the input is cut into cells (by default the decomposition grid, so
each subdomain core is exactly one cell). Some cells carry a small bright mark
(square or cube) at a random position in the cell's core region, kept
``margin`` pixels away from the cell borders so that an overlap of up to
``2 * margin`` pixels does not show a neighbour's mark. The label is the
NUMBER of marked cells (0..N, N+1 classes); the count is drawn uniformly and
then the cells at random, so classes are balanced. The label depends on all
subdomains jointly: each local model only sees whether its own cell is marked,
so averaging or voting local class probabilities cannot count, whereas a DNN
on the concatenated local probabilities can.

``blobs``: one Gaussian blob per sample at a class-specific location plus
noise; easy, and every subdomain is partly informative.
"""

from __future__ import annotations

import math
from itertools import product
from typing import Sequence

import numpy as np

from ddray.data.validation import DataError
from ddray.decomposition import AXIS_NAMES, axis_bounds

NOISE = 0.15  # background: uniform noise in [0, NOISE)
MARK_BRIGHTNESS = (0.6, 1.0)  # marks add a brightness drawn from this range
ORIGIN = "synthetic data"


def rng_for(seed: int, stream: int) -> np.random.Generator:
    """A generator for ``seed`` (any int, also negative) and a stream id."""
    return np.random.default_rng([int(seed) % (2**32), stream])


def _check_size(size: Sequence[int]) -> tuple[int, ...]:
    size = tuple(int(s) for s in size)
    if len(size) not in (2, 3) or any(s < 1 for s in size):
        raise DataError(f"{ORIGIN}: dataset.size must be [H, W] or [D, H, W] with positive entries; got {list(size)}")
    return size


def mark_geometry(cell_length: int) -> tuple[int, int]:
    """(mark edge, margin to the cell border) in pixels for a cell of this length."""
    quarter = max(1, cell_length // 4)
    return quarter, quarter


def cell_bounds(size: Sequence[int], cells: Sequence[int]) -> list[list[tuple[int, int]]]:
    """Per axis, (start, stop) of every cell: the decomposition's cores (overlap 0)."""
    return [axis_bounds(length, parts, 0) for length, parts in zip(size, cells)]


def generate_count(
    size: Sequence[int], cells: Sequence[int], samples: int, channels: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """x (samples, channels, *size) float32 and y = number of marked cells (int64)."""
    size = _check_size(size)
    cells = tuple(int(c) for c in cells)
    if len(cells) != len(size):
        raise DataError(
            f"{ORIGIN}: dataset.cells {list(cells)} has {len(cells)} entries but dataset.size {list(size)} "
            f"has {len(size)}; give one cell count per axis"
        )
    if any(c < 1 for c in cells):
        raise DataError(f"{ORIGIN}: every dataset.cells entry must be >= 1; got {list(cells)}")
    names = AXIS_NAMES[len(size)]
    bounds = cell_bounds(size, cells)
    for axis, per_axis in enumerate(bounds):
        smallest = min(stop - start for start, stop in per_axis)
        mark, margin = mark_geometry(smallest)
        if smallest < mark + 2 * margin:
            raise DataError(
                f"{ORIGIN}: dataset.size {list(size)} is too small for {list(cells)} cells: along the "
                f"{names[axis]} a cell is {smallest} px, at least 3 are needed to place a mark away from "
                f"the cell borders; increase dataset.size or use fewer cells"
            )

    rng = rng_for(seed, 1)
    n_cells = math.prod(cells)
    counts = rng.integers(0, n_cells + 1, size=samples)
    # a random rank per cell; the `count` lowest-ranked cells are marked
    ranks = rng.random((samples, n_cells)).argsort(axis=1).argsort(axis=1)
    marked = ranks < counts[:, None]
    brightness = rng.uniform(*MARK_BRIGHTNESS, size=(samples, n_cells)).astype(np.float32)
    x = rng.uniform(0.0, NOISE, size=(samples, channels, *size)).astype(np.float32)

    ndim = len(size)
    for cell, position in enumerate(product(*(range(c) for c in cells))):
        mask = marked[:, cell].reshape((samples,) + (1,) * ndim)
        for axis, p in enumerate(position):
            start, stop = bounds[axis][p]
            mark, margin = mark_geometry(stop - start)
            offset = rng.integers(start + margin, stop - margin - mark + 1, size=samples)
            coords = np.arange(size[axis])
            inside = (coords[None, :] >= offset[:, None]) & (coords[None, :] < offset[:, None] + mark)
            shape = [samples] + [1] * ndim
            shape[1 + axis] = size[axis]
            mask = mask & inside.reshape(shape)
        x += (mask * brightness[:, cell].reshape((samples,) + (1,) * ndim))[:, None]
    return x, counts.astype(np.int64)


def blob_centers(size: Sequence[int], classes: int) -> np.ndarray:
    """(classes, ndim) class-specific blob centres on a ring in the H-W plane (a helix in 3D)."""
    size = np.asarray(size, dtype=np.float64)
    angle = 2 * np.pi * np.arange(classes) / classes
    centers = np.empty((classes, len(size)))
    centers[:, -2] = (size[-2] - 1) / 2 + 0.3 * size[-2] * np.sin(angle)
    centers[:, -1] = (size[-1] - 1) / 2 + 0.3 * size[-1] * np.cos(angle)
    if len(size) == 3:
        centers[:, 0] = (size[0] - 1) / 2 + 0.25 * size[0] * np.sin(2 * angle + np.pi / 4)
    return centers


def generate_blobs(
    size: Sequence[int], classes: int, samples: int, channels: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """x (samples, channels, *size) float32 and balanced labels 0..classes-1."""
    size = _check_size(size)
    if classes < 2:
        raise DataError(f"{ORIGIN}: dataset.classes must be >= 2; got {classes}")
    rng = rng_for(seed, 2)
    y = rng.permutation(np.arange(samples) % classes).astype(np.int64)
    centers = blob_centers(size, classes)[y]  # (samples, ndim)
    ndim = len(size)
    amplitude = rng.uniform(0.7, 1.0, size=samples).astype(np.float32)
    blob = amplitude.reshape((samples,) + (1,) * ndim)
    for axis, length in enumerate(size):
        sigma = max(1.0, 0.12 * length)
        center = centers[:, axis] + rng.normal(0.0, 0.3 * sigma, size=samples)
        coords = np.arange(length)
        g = np.exp(-((coords[None, :] - center[:, None]) ** 2) / (2 * sigma**2)).astype(np.float32)
        shape = [samples] + [1] * ndim
        shape[1 + axis] = length
        blob = blob * g.reshape(shape)
    x = rng.normal(0.0, 0.1, size=(samples, channels, *size)).astype(np.float32)
    x += blob[:, None]
    return x, y
