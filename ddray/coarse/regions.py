"""Regions of a multilevel coarse net: neighbouring subdomains grouped by their grid coordinates.

Subdomain ``i`` sits at ``np.unravel_index(i, grid)`` (the row-major order of
:func:`ddray.decomposition.decompose`). A region shape ``r`` divides the grid ``g`` per axis; region
``j`` of the level is at ``unravel_index(j, g / r)`` and holds the units whose coordinates ``p`` have
``p // r`` equal to it, in row-major order inside the region. Each further level groups the regions
of the level below in the same way, on the grid of regions ``g / r``.
"""

from __future__ import annotations

from itertools import product
from typing import Sequence


def level_problem(grid: Sequence[int], levels: Sequence[Sequence[int]]) -> str | None:
    """Why ``levels`` cannot group ``grid`` (one sentence naming the level and the axis), or None."""
    current = [int(g) for g in grid]
    for n, shape in enumerate(levels, start=1):
        shape = [int(s) for s in shape]
        if len(shape) != len(current):
            return (f"level {n} region shape {shape} has {len(shape)} entries but the grid {list(grid)} has "
                    f"{len(current)}; give one entry per grid axis ({'[d, h, w]' if len(current) == 3 else '[rows, cols]'})")
        if any(s < 1 for s in shape):
            return f"level {n} region shape {shape}: every entry must be >= 1"
        if all(s == 1 for s in shape):
            return f"level {n} region shape {shape} groups nothing: a region needs at least 2 subdomains"
        for axis, (size, parts) in enumerate(zip(shape, current)):
            if parts % size:
                below = "the decomposition grid" if n == 1 else f"the grid of level {n - 1}'s regions"
                return (f"level {n} region shape {shape} does not divide {below} {current} along axis {axis} "
                        f"({parts} is not a multiple of {size}); choose region sizes that divide it, e.g. "
                        f"{[d for d in range(1, parts + 1) if parts % d == 0]} along that axis")
        current = [c // s for c, s in zip(current, shape)]
    return None


def level_grids(grid: Sequence[int], levels: Sequence[Sequence[int]]) -> list[list[int]]:
    """The grid of units at each level: ``[grid, grid / levels[0], ...]`` (the last one feeds the global DNN)."""
    problem = level_problem(grid, levels)
    if problem:
        raise ValueError(f"aggregation.levels: {problem}")
    grids = [[int(g) for g in grid]]
    for shape in levels:
        grids.append([c // int(s) for c, s in zip(grids[-1], shape)])
    return grids


def _unravel(index: int, shape: Sequence[int]) -> tuple[int, ...]:
    out = []
    for size in reversed(shape):
        out.append(index % size)
        index //= size
    return tuple(reversed(out))


def _ravel(position: Sequence[int], shape: Sequence[int]) -> int:
    index = 0
    for p, size in zip(position, shape):
        index = index * size + p
    return index


def group(grid: Sequence[int], shape: Sequence[int]) -> list[list[int]]:
    """Members (unit indices in the row-major order of ``grid``) of each region of ``shape``, regions in row-major
    order of the region grid ``grid / shape``. ``group([4, 4], [2, 2])[0] == [0, 1, 4, 5]``."""
    problem = level_problem(grid, [shape])
    if problem:
        raise ValueError(problem)
    region_grid = [g // s for g, s in zip(grid, shape)]
    out = []
    for r in range(_product(region_grid)):
        corner = [p * s for p, s in zip(_unravel(r, region_grid), shape)]
        out.append([_ravel([c + o for c, o in zip(corner, offset)], grid) for offset in product(*(range(s) for s in shape))])
    return out


def hierarchy(grid: Sequence[int], levels: Sequence[Sequence[int]]) -> list[list[list[int]]]:
    """``hierarchy(grid, levels)[l][j]``: the units of level ``l`` (0: subdomains) grouped into region ``j`` of level ``l + 1``."""
    grids = level_grids(grid, levels)
    return [group(g, s) for g, s in zip(grids, levels)]


def subdomains_of(grid: Sequence[int], levels: Sequence[Sequence[int]], level: int, region: int) -> list[int]:
    """Every subdomain under region ``region`` of level ``level`` (1-based levels), sorted."""
    tree = hierarchy(grid, levels)
    units = [region]
    for members in reversed(tree[:level]):
        units = [m for u in units for m in members[u]]
    return sorted(units)


def _product(values: Sequence[int]) -> int:
    n = 1
    for v in values:
        n *= int(v)
    return n
