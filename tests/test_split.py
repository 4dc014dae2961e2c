"""ddray's splits and digits loader give scikit-learn's indices and array, without importing it in a run."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import load_digits as sklearn_digits
from sklearn.model_selection import train_test_split

from ddray.config import DatasetConfig
from ddray.data.sources import load_digits
from ddray.data.split import shuffle_split, stratified_split


def _labels(rng: np.random.RandomState, n: int, classes: int, skew: bool) -> np.ndarray:
    weights = rng.dirichlet(np.ones(classes) * (0.5 if skew else 50))
    y = rng.choice(classes, size=n, p=weights)
    y[: 2 * classes] = np.repeat(np.arange(classes), 2)  # every class at least twice: stratifiable
    return rng.permutation(y)


@pytest.mark.parametrize("case", range(40))
def test_stratified_split_matches_scikit_learn(case):
    rng = np.random.RandomState(case)
    classes = int(rng.randint(2, 12))
    n = int(rng.randint(6 * classes, 400))
    y = _labels(rng, n, classes, skew=case % 2 == 0)
    fraction = float(rng.choice([0.1, 0.15, 0.2, 0.25, 1 / 3, 0.5]))
    seed = int(rng.randint(0, 2**31))
    expected = train_test_split(np.arange(n), test_size=fraction, random_state=seed, shuffle=True, stratify=y)
    got = stratified_split(y, fraction, seed)
    assert [a.tolist() for a in got] == [a.tolist() for a in expected]


@pytest.mark.parametrize("n, fraction, seed", [(10, 0.2, 0), (97, 1 / 3, 5), (1797, 0.2, 123456)])
def test_shuffle_split_matches_scikit_learn(n, fraction, seed):
    expected = train_test_split(np.arange(n), test_size=fraction, random_state=seed, shuffle=True)
    assert [a.tolist() for a in shuffle_split(n, fraction, seed)] == [a.tolist() for a in expected]


def test_unstratifiable_labels_are_refused_like_scikit_learn():
    singleton = np.array([0, 0, 0, 1, 1, 1, 2])
    with pytest.raises(ValueError, match=r"classes \[2\] have a single member"):
        stratified_split(singleton, 0.3, 0)
    with pytest.raises(ValueError):
        train_test_split(np.arange(7), test_size=0.3, random_state=0, stratify=singleton)
    with pytest.raises(ValueError, match="test part would have 2 samples, fewer than the 3 classes"):
        stratified_split(np.array([0, 0, 1, 1, 2, 2, 0, 1, 2, 0]), 0.2, 0)
    with pytest.raises(ValueError, match="train set would be empty"):
        shuffle_split(1, 0.5, 0)


def test_digits_are_scikit_learns_array():
    raw = load_digits(DatasetConfig(source="digits"), seed=0, grid=None)
    bunch = sklearn_digits()
    assert np.array_equal(raw.x[:, 0], bunch.images.astype(np.float32) / 16.0)
    assert np.array_equal(raw.y, bunch.target)
