"""Multilevel coarse net (aggregation.levels): region grouping in 2D and 3D, validation of region shapes,
regional DNNs then the global DNN, and prediction from the saved models. No Ray."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ddray.coarse.multilevel import Multilevel, load_models, predict
from ddray.coarse.regions import group, hierarchy, level_grids, level_problem, subdomains_of
from ddray.config import ConfigError, parse_config
from ddray.decomposition import decompose
from ddray.training.spec import DNNSpec


# -- grouping -------------------------------------------------------------------
def test_2d_regions_follow_grid_coordinates():
    assert group([4, 4], [2, 2]) == [[0, 1, 4, 5], [2, 3, 6, 7], [8, 9, 12, 13], [10, 11, 14, 15]]
    assert group([2, 4], [2, 1]) == [[0, 4], [1, 5], [2, 6], [3, 7]]
    # the decomposition's own order: every member of a region sits inside the region's block of positions
    subs = decompose([16, 16], [4, 4])
    for r, members in enumerate(group([4, 4], [2, 2])):
        corner = (r // 2 * 2, r % 2 * 2)
        assert {subs[m].position for m in members} == {(corner[0] + i, corner[1] + j) for i in range(2) for j in range(2)}


def test_3d_regions_follow_grid_coordinates():
    assert group([2, 2, 2], [1, 2, 2]) == [[0, 1, 2, 3], [4, 5, 6, 7]]
    regions = group([4, 4, 4], [2, 2, 2])
    assert len(regions) == 8 and all(len(r) == 8 for r in regions)
    assert regions[0] == [0, 1, 4, 5, 16, 17, 20, 21]
    assert sorted(m for r in regions for m in r) == list(range(64))
    subs = decompose([16, 16, 16], [4, 4, 4])
    for r, members in enumerate(regions):
        corners = {tuple(p // 2 for p in subs[m].position) for m in members}
        assert corners == {tuple(np.unravel_index(r, (2, 2, 2)))}


def test_two_levels_group_regions_of_regions():
    assert level_grids([8, 8], [[2, 2], [2, 2]]) == [[8, 8], [4, 4], [2, 2]]
    tree = hierarchy([8, 8], [[2, 2], [2, 2]])
    assert [len(level) for level in tree] == [16, 4]
    assert tree[1][0] == [0, 1, 4, 5]  # level-1 regions of the top-left level-2 region
    assert subdomains_of([8, 8], [[2, 2], [2, 2]], 2, 0) == sorted(r * 8 + c for r in range(4) for c in range(4))


# -- validation -----------------------------------------------------------------
@pytest.mark.parametrize(
    "grid,levels,words",
    [
        ([4, 4], [[3, 2]], ["level 1", "does not divide the decomposition grid [4, 4] along axis 0", "[1, 2, 4]"]),
        ([4, 4], [[2, 2], [3, 1]], ["level 2", "grid of level 1's regions [2, 2]"]),
        ([4, 4], [[2, 2, 2]], ["3 entries", "[rows, cols]"]),
        ([2, 2, 2], [[2, 2]], ["2 entries", "[d, h, w]"]),
        ([4, 4], [[1, 1]], ["groups nothing"]),
    ],
)
def test_bad_region_shapes_are_named(grid, levels, words):
    problem = level_problem(grid, levels)
    assert problem is not None and all(w in problem for w in words), problem
    with pytest.raises(ConfigError) as err:
        parse_config({"decomposition": {"grid": grid}, "aggregation": {"levels": levels}})
    assert "aggregation.levels" in str(err.value) and words[0] in str(err.value)


def test_good_region_shapes_pass_and_streaming_needs_the_dnn():
    config = parse_config({"decomposition": {"grid": [4, 4, 2]}, "aggregation": {"levels": [[2, 2, 1], [2, 2, 2]], "streaming": True}})
    assert config.aggregation.levels == [[2, 2, 1], [2, 2, 2]] and config.aggregation.streaming
    with pytest.raises(ConfigError, match="streaming refits the DNN"):
        parse_config({"aggregation": {"methods": ["average"], "streaming": True}})


# -- fitting ----------------------------------------------------------------------
def quadrant_problem(n: int = 400, grid=(4, 4), k: int = 3, seed: int = 0):
    """Local probabilities whose label lives in the top-left region (subdomains 0, 1, 4, 5); the rest is noise."""
    rng = np.random.default_rng(seed)
    n_sub = int(np.prod(grid))
    probs, labels = {}, {}
    for split, size in (("train", n), ("val", n // 4), ("test", n // 4)):
        y = rng.integers(0, k, size)
        p = rng.dirichlet(np.ones(k), size=(size, n_sub)).astype(np.float32)
        for s in (0, 1, 4, 5):
            p[np.arange(size), s] = 0.3 * p[np.arange(size), s]
            p[np.arange(size), s, y] += 0.7
        probs[split], labels[split] = {s: p[:, s] for s in range(n_sub)}, y
    local = {s: {split: probs[split][s] for split in probs} for s in range(n_sub)}
    return local, labels


def test_regional_dnns_then_the_global_dnn():
    local, labels = quadrant_problem()
    flat = DNNSpec(16, 3, hidden=(16,), epochs=15, lr=0.01, batch_size=64)
    ml = Multilevel([4, 4], [[2, 2]], flat, labels)
    assert ml.ready({0, 1, 4}) == []
    assert ml.ready({0, 1, 4, 5, 2}) == [(1, 0)]  # the region starts as soon as its subdomains are done
    ml.fit_ready({s: local[s] for s in (0, 1, 4, 5)})
    assert set(ml.fits) == {(1, 0)}
    out = ml.finish(local)
    assert set(ml.fits) == {(1, 0), (1, 1), (1, 2), (1, 3), (2, 0)}
    regions = {r["region"]: r for r in out["regions"]}
    assert [r["subdomains"] for r in out["regions"]] == group([4, 4], [2, 2])
    assert regions[0]["test_accuracy"] > 0.9 and max(regions[i]["test_accuracy"] for i in (1, 2, 3)) < 0.6
    assert out["test_accuracy"] > 0.9
    # every coarse model counted; each regional DNN sees 4 x 3 inputs, the global DNN 4 x 3, the flat one 16 x 3
    per_model = (4 * 3) * 16 + 16 + 16 * 3 + 3
    assert out["parameters"] == 5 * per_model == sum(r["parameters"] for r in out["regions"]) + out["global"]["parameters"]
    assert out["flat_dnn_parameters"] == (16 * 3) * 16 + 16 + 16 * 3 + 3
    assert out["largest_coarse_parameters"] == per_model < out["flat_dnn_parameters"]
    # predict from what is saved gives the fitted net's test decisions
    saved = ml.saved()
    reloaded = load_models({**saved, "models": [{**m, "state_dict": {k: v.clone() for k, v in m["state_dict"].items()}} for m in saved["models"]]})
    test = np.stack([local[s]["test"] for s in range(16)], axis=1)
    with torch.no_grad():
        predicted = predict(reloaded, test)
    np.testing.assert_allclose(predicted, ml.fits[(2, 0)].outputs["test"], atol=1e-6)


def test_finish_needs_every_subdomain():
    local, labels = quadrant_problem(n=40)
    ml = Multilevel([4, 4], [[2, 2]], DNNSpec(16, 3, hidden=(4,), epochs=1), labels)
    with pytest.raises(ValueError, match=r"missing \[15\]"):
        ml.finish({s: local[s] for s in range(15)})
