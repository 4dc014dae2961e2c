"""Properties of the decomposition a user relies on: coverage, exact overlap, determinism."""

import itertools

import numpy as np
import pytest
import torch

from ddray.decomposition import DecompositionError, axis_bounds, check_fits, decompose

SHAPES_2D = [((32, 32), (2, 2), 2), ((17, 23), (3, 2), 1), ((31, 30), (4, 3), 3), ((16, 16), (1, 4), 0), ((20, 21), (2, 3), 4)]
SHAPES_3D = [((16, 16, 16), (2, 2, 2), 2), ((9, 13, 12), (1, 2, 3), 1)]


@pytest.mark.parametrize("shape,grid,overlap", SHAPES_2D + SHAPES_3D)
def test_tiles_cover_every_pixel(shape, grid, overlap):
    covered = np.zeros(shape, dtype=int)
    for sub in decompose(shape, grid, overlap):
        covered[sub.slices()] += 1
    assert covered.min() >= 1


@pytest.mark.parametrize("shape,grid,overlap", SHAPES_2D + SHAPES_3D)
def test_neighbours_overlap_by_exactly_overlap(shape, grid, overlap):
    subs = {s.position: s for s in decompose(shape, grid, overlap)}
    for pos, sub in subs.items():
        for axis in range(len(grid)):
            nxt = list(pos)
            nxt[axis] += 1
            if tuple(nxt) not in subs:
                continue
            other = subs[tuple(nxt)]
            shared = sub.bounds[axis][1] - other.bounds[axis][0]
            assert shared == overlap
            # along the other axes the neighbours are aligned
            for a in range(len(grid)):
                if a != axis:
                    assert sub.bounds[a] == other.bounds[a]


def test_non_overlapping_tiles_partition_the_image():
    counts = np.zeros((30, 31), dtype=int)
    for sub in decompose((30, 31), (3, 4), 0):
        counts[sub.slices()] += 1
    assert (counts == 1).all()


def test_uneven_sizes_follow_documented_rule():
    # floor(i*L/n) cores: 10 px in 3 parts -> 3, 3, 4; overlap 2 adds 1 px each side of interior edges
    assert axis_bounds(10, 3, 0) == [(0, 3), (3, 6), (6, 10)]
    assert axis_bounds(10, 3, 2) == [(0, 4), (2, 7), (5, 10)]
    assert axis_bounds(10, 3, 3) == [(0, 5), (2, 8), (5, 10)]


def test_same_pixels_on_every_call_and_vectorised_extract():
    x = torch.arange(2 * 1 * 12 * 12, dtype=torch.float32).reshape(2, 1, 12, 12)
    first = [s.extract(x).clone() for s in decompose((12, 12), (2, 2), 2)]
    second = [s.extract(x) for s in decompose((12, 12), (2, 2), 2)]
    for a, b in zip(first, second):
        assert torch.equal(a, b)
    sub = decompose((12, 12), (2, 2), 2)[3]
    assert first[3].shape == (2, 1, *sub.shape)
    assert torch.equal(first[3][1, 0], x[1, 0, 5:, 5:])


def test_numpy_extract_is_a_view():
    x = np.zeros((3, 2, 8, 8, 8), dtype=np.float32)
    sub = decompose((8, 8, 8), (2, 2, 2), 0)[7]
    view = sub.extract(x)
    assert view.shape == (3, 2, 4, 4, 4)
    assert np.shares_memory(view, x)


def test_row_major_index_order():
    subs = decompose((12, 12, 12), (2, 3, 2), 0)
    assert [s.position for s in subs] == list(itertools.product(range(2), range(3), range(2)))
    assert [s.index for s in subs] == list(range(12))


@pytest.mark.parametrize(
    "shape,grid,overlap,fragment",
    [
        ((8, 8), (4, 4), 0, "minimum is 4"),
        ((16, 16), (4, 4), 5, "at least the overlap"),
        ((16, 16), (2, 2, 2), 0, "spatial dimensions"),
        ((6, 32), (2, 2), 0, "along the height"),
    ],
)
def test_too_small_images_name_the_problem(shape, grid, overlap, fragment):
    with pytest.raises(DecompositionError, match=fragment):
        check_fits(shape, grid, overlap)
