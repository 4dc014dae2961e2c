"""Seeded train/test splits, the same indices as scikit-learn's ``train_test_split``.

Why not call scikit-learn: importing ``sklearn.model_selection`` costs 1.1-1.4 s of CPU in every
run's driver, at the moment Ray and the subdomain workers start on the same cores. This module
is that function's algorithm for the one case ddray uses (a float ``test_size``, shuffling, with
or without ``stratify``), written against numpy's ``RandomState`` exactly as scikit-learn uses it,
so a split (and the dataset fingerprint of every earlier run) is unchanged;
``tests/test_split.py`` checks the indices against scikit-learn itself.
"""

from __future__ import annotations

from math import ceil

import numpy as np


def split_sizes(n_samples: int, test_size: float) -> tuple[int, int]:
    """(n_train, n_test): the test part rounded up, as scikit-learn does."""
    if not 0 < test_size < 1:
        raise ValueError(f"test_size={test_size} should be a float in the (0, 1) range")
    n_test = ceil(test_size * n_samples)
    n_train = n_samples - n_test
    if n_train <= 0:
        raise ValueError(f"with n_samples={n_samples} and test_size={test_size} the train set would be empty")
    return n_train, n_test


def shuffle_split(n_samples: int, test_size: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) indices of a random split (``ShuffleSplit``)."""
    n_train, n_test = split_sizes(n_samples, test_size)
    permutation = np.random.RandomState(seed).permutation(n_samples)
    return permutation[n_test : n_test + n_train], permutation[:n_test]


def stratified_split(y: np.ndarray, test_size: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) indices with each class in both parts in proportion (``StratifiedShuffleSplit``).

    Raises ValueError when a class has a single member or a part is smaller than the number of classes.
    """
    n_train, n_test = split_sizes(len(y), test_size)
    classes, y_indices, class_counts = np.unique(y, return_inverse=True, return_counts=True)
    if np.min(class_counts) < 2:
        raise ValueError(f"the classes {classes[class_counts < 2].tolist()} have a single member; each needs 2 or more")
    for part, size in (("train", n_train), ("test", n_test)):
        if size < len(classes):
            raise ValueError(f"the {part} part would have {size} samples, fewer than the {len(classes)} classes")
    class_indices = np.split(np.argsort(y_indices, kind="stable"), np.cumsum(class_counts)[:-1])
    rng = np.random.RandomState(seed)
    n_i = _approximate_mode(class_counts, n_train, rng)
    t_i = _approximate_mode(class_counts - n_i, n_test, rng)
    train: list[int] = []
    test: list[int] = []
    for i in range(len(classes)):
        members = class_indices[i].take(rng.permutation(class_counts[i]), mode="clip")
        train.extend(members[: n_i[i]])
        test.extend(members[n_i[i] : n_i[i] + t_i[i]])
    return rng.permutation(train), rng.permutation(test)


def _approximate_mode(class_counts: np.ndarray, n_draws: int, rng: np.random.RandomState) -> np.ndarray:
    """Per-class counts of ``n_draws`` draws, about the multivariate hypergeometric's mode: floored shares,
    then the draws left over go to the largest remainders, ties broken at random."""
    continuous = class_counts / class_counts.sum() * n_draws
    floored = np.floor(continuous)
    need_to_add = int(n_draws - floored.sum())
    if need_to_add > 0:
        remainder = continuous - floored
        for value in np.sort(np.unique(remainder))[::-1]:
            (inds,) = np.where(remainder == value)
            add_now = min(len(inds), need_to_add)
            floored[rng.choice(inds, size=add_now, replace=False)] += 1
            need_to_add -= add_now
            if need_to_add == 0:
                break
    return floored.astype(int)
