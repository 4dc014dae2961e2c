"""The coarse level's paper options: the DNN fitted on held-out (validation) probabilities, the vote tie rule."""

from __future__ import annotations

import numpy as np
import pytest

from ddray.aggregation import aggregate, split_validation, train_dnn, vote_predict
from ddray.config import parse_config
from ddray.training.spec import DNNSpec, SpecError, dnn_spec


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # torch fits in this process: see conftest


def _confident(labels: np.ndarray, shown: np.ndarray, k: int, n_sub: int, rng) -> np.ndarray:
    """Local probabilities: subdomain 0 is sure of class ``shown``, the others are noise."""
    n = len(labels)
    probs = rng.dirichlet(np.ones(k), size=(n, n_sub)).astype(np.float32)
    probs[:, 0] = 0.01 / (k - 1)
    probs[np.arange(n), 0, shown] = 0.99
    return probs


def _overconfident_train(seed=0, k=3, n_sub=2):
    """Training-set probabilities point at the wrong class (label + 1: what memorised training images can
    look like), held-out ones at the right one: only fit_on: val can learn the mapping that holds on test."""
    rng = np.random.default_rng(seed)
    probs, labels = {}, {}
    for split, n in (("train", 300), ("val", 160), ("test", 200)):
        y = rng.integers(0, k, n)
        shown = (y + 1) % k if split == "train" else y
        probs[split], labels[split] = _confident(y, shown, k, n_sub, rng), y
    return probs, labels


def test_fit_on_val_learns_from_held_out_probabilities_where_train_ones_mislead():
    probs, labels = _overconfident_train()
    spec = DNNSpec(2, 3, hidden=(16,), epochs=40, lr=0.01, batch_size=32)
    on_train = train_dnn(probs, labels, spec)
    on_val = train_dnn(probs, labels, DNNSpec(**{**spec.to_dict(), "fit_on": "val"}))
    assert on_train.test_accuracy < 0.5 < 0.95 < on_val.test_accuracy
    assert (on_train.fit_samples, on_train.selection_samples) == (300, 160)
    assert (on_val.fit_samples, on_val.selection_samples) == (120, 40)


def test_fit_on_val_never_fits_on_train_probabilities():
    probs, labels = _overconfident_train()
    poisoned = {**probs, "train": np.full_like(probs["train"], np.nan)}  # any use of train would show as NaN
    outcome = train_dnn(poisoned, labels, DNNSpec(2, 3, hidden=(8,), epochs=20, lr=0.01, batch_size=16, fit_on="val"))
    assert np.isfinite(outcome.test_probabilities).all() and outcome.test_accuracy > 0.9


def test_validation_split_is_disjoint_seeded_and_needs_four_samples():
    fit_idx, select_idx = split_validation(10, seed=3)
    assert len(select_idx) == 2 and len(fit_idx) == 8
    assert sorted(np.concatenate([fit_idx, select_idx]).tolist()) == list(range(10))
    again = split_validation(10, seed=3)
    assert (again[0] == fit_idx).all() and (again[1] == select_idx).all()
    with pytest.raises(ValueError, match="fit_on: val needs at least 4 validation samples"):
        split_validation(3, seed=0)


def test_fit_on_reaches_the_spec_and_results():
    config = parse_config({"aggregation": {"dnn": {"fit_on": "val", "epochs": 3}}})
    spec = dnn_spec(config, num_subdomains=2, num_classes=3)
    assert spec.fit_on == "val" and DNNSpec.from_dict(spec.to_dict()) == spec  # saved in dnn.pt, loaded by predict
    assert dnn_spec(parse_config({}), num_subdomains=2, num_classes=3).fit_on == "train"  # today's default
    probs, labels = _overconfident_train()
    out, model = aggregate(["dnn", "vote"], probs, labels, spec)
    assert out["dnn"]["fit_on"] == "val" and out["dnn"]["fit_samples"] == 120 and out["dnn"]["selection_samples"] == 40
    assert model is not None
    with pytest.raises(SpecError, match="aggregation.dnn.fit_on"):
        DNNSpec(2, 3, fit_on="test")


def test_vote_tie_rule_full():
    # 4 subdomains, 3 classes: votes 0,0,1,1 -> tie between 0 and 1; class 2 has the highest mean but no vote
    probs = np.array([[[0.5, 0.1, 0.4], [0.5, 0.1, 0.4], [0.1, 0.5, 0.4], [0.1, 0.5, 0.4]]], dtype=np.float32)
    assert vote_predict(probs).tolist() == [0]  # tied in votes and mean: the lower class index
    probs[0, 2] = [0.0, 0.6, 0.4]
    assert vote_predict(probs).tolist() == [1]  # tied in votes: the higher mean probability
    probs[0, 1] = [0.1, 0.2, 0.7]
    assert vote_predict(probs).tolist() == [1]  # one vote more beats any mean
