"""Per-subdomain Ray Tune search: samplers, per-subdomain search and pruning, selection, isolation."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from ray import tune
from ray.tune.schedulers import TrialScheduler
from ray.tune.search import Searcher

from ddray.config import parse_config
from ddray.data import load_dataset
from ddray.decomposition import decompose
from ddray.orchestration.local_phase import SubdomainFailed
from ddray.orchestration.tune_search import (
    PerSubdomainScheduler,
    SubdomainSearcher,
    TrialRecord,
    classify,
    coerce_overrides,
    search_space,
    select_best,
    trials_per_subdomain,
)
from ddray.training.local import fingerprint

ISSUE_TUNE = {
    "num_samples": 2,
    "search_alg": "random",
    "scheduler": "none",
    "space": {"lr": {"loguniform": [0.0003, 0.01]}, "batch_size": {"choice": [32, 64]}},
}


def small_config(**overrides):
    cfg = {
        "dataset": {"source": "synthetic", "kind": "count", "samples": 300, "size": [16, 16]},
        "decomposition": {"grid": [1, 2]},
        "local_model": {"name": "small_cnn", "width": 0.25},
        "training": {"epochs": 3, "batch_size": 32, "lr": 0.003},
        "aggregation": {"methods": ["average", "vote"]},
        "tune": ISSUE_TUNE,
    }
    cfg.update(overrides)
    return parse_config(cfg)


# ------------------------------------------------------------------ no cluster


def test_space_uses_tune_samplers_and_grid_multiplies_samples():
    cfg = parse_config(
        {
            "tune": {
                "num_samples": 3,
                "space": {
                    "lr": {"loguniform": [1e-4, 1e-2]},
                    "weight_decay": {"uniform": [0.0, 0.1]},
                    "batch_size": {"choice": [32, 64]},
                    "width": {"grid": [0.25, 0.5]},
                    "epochs": {"choice": [2, 3]},
                },
            }
        }
    )
    space = search_space(cfg.tune)
    assert isinstance(space["lr"], tune.search.sample.Float) and isinstance(space["lr"].sampler, tune.search.sample.LogUniform)
    assert isinstance(space["weight_decay"].sampler, tune.search.sample.Uniform)
    assert isinstance(space["batch_size"], tune.search.sample.Categorical)
    assert space["width"] == {"grid_search": [0.25, 0.5]}
    assert trials_per_subdomain(cfg.tune) == 6
    assert coerce_overrides({"batch_size": 63.7, "epochs": 2.2, "lr": "0.01", "subdomain": 1}) == {"batch_size": 64, "epochs": 2, "lr": 0.01}
    with pytest.raises(ValueError, match="width"):
        coerce_overrides({"width": 1.5})


def test_searcher_goes_subdomain_by_subdomain_and_keeps_subdomains_apart(tmp_path):
    space = {"lr": tune.loguniform(1e-4, 1e-2), "width": tune.grid_search([0.25, 0.5])}
    searcher = SubdomainSearcher([0, 1], space, num_samples=2, algorithm="random", metric="selected_val_accuracy", mode="max", seed=3)
    suggestions = [searcher.suggest(f"t{i}") for i in range(8)]
    assert [s["subdomain"] for s in suggestions] == [0, 0, 0, 0, 1, 1, 1, 1]
    for sub in (0, 1):
        widths = sorted(s["width"] for s in suggestions if s["subdomain"] == sub)
        assert widths == [0.25, 0.25, 0.5, 0.5]  # every grid point num_samples times
    assert len({s["lr"] for s in suggestions}) == 8  # independent random draws
    assert searcher.suggest("t8") == Searcher.FINISHED

    # state survives the experiment checkpoint (Tuner.restore)
    path = tmp_path / "searcher.pkl"
    fresh = SubdomainSearcher([0, 1], space, num_samples=1, algorithm="random", metric="m", mode="max")
    searcher2 = SubdomainSearcher([0, 1], space, num_samples=2, algorithm="random", metric="selected_val_accuracy", mode="max", seed=3)
    searcher2.suggest("a")
    searcher2.save(str(path))
    fresh.restore(str(path))
    assert fresh.suggest("b") == {**suggestions[1]}


def test_optuna_searcher_learns_per_subdomain():
    space = {"lr": tune.loguniform(1e-4, 1e-2)}
    searcher = SubdomainSearcher([0, 1], space, num_samples=2, algorithm="optuna", metric="selected_val_accuracy", mode="max")
    first = searcher.suggest("a")
    second = searcher.suggest("b")
    assert first["subdomain"] == 0 and second["subdomain"] == 0
    searcher.on_trial_complete("a", {"selected_val_accuracy": 0.9})
    searcher.on_trial_complete("b", {"selected_val_accuracy": float("nan")})  # no metric: told to optuna as a failure
    third = searcher.suggest("c")
    assert third["subdomain"] == 1
    studies = {i: inner._ot_study for i, inner in searcher._inner.items()}
    assert len(studies[0].trials) == 2 and len(studies[1].trials) == 1
    assert [t.state.name for t in studies[0].trials] == ["COMPLETE", "FAIL"]


def test_pruning_never_compares_trials_of_different_subdomains():
    sched = PerSubdomainScheduler(metric="val_loss", mode="min", max_t=4, grace_period=1)

    def trial(tid, sub):
        return SimpleNamespace(trial_id=tid, config={"subdomain": sub})

    good = [trial(f"a{i}", 0) for i in range(3)]
    other = trial("b0", 1)
    for t in good + [other]:
        sched.on_trial_add(None, t)
    for t in good:  # subdomain 0 has small losses at epoch 1
        assert sched.on_trial_result(None, t, {"epoch": 1, "val_loss": 0.1}) == TrialScheduler.CONTINUE
    # subdomain 1's loss is 100x larger (another scale), yet it is alone in its bracket: not stopped
    assert sched.on_trial_result(None, other, {"epoch": 1, "val_loss": 10.0}) == TrialScheduler.CONTINUE
    # within subdomain 0, a much worse trial is stopped
    worse = trial("a9", 0)
    sched.on_trial_add(None, worse)
    assert sched.on_trial_result(None, worse, {"epoch": 1, "val_loss": 5.0}) == TrialScheduler.STOP
    assert set(sched._by_subdomain) == {0, 1}


def _record(tid, metrics, error=None, checkpoint=True):
    return TrialRecord(tid, 0, {"lr": 0.01}, metrics, object() if checkpoint else None, error)


def test_selection_uses_validation_only_and_missing_metrics_are_failures():
    records = [
        _record("a", {"selected_val_accuracy": 0.70, "selected_val_loss": 0.9, "final": 1, "test_accuracy": 0.99}),
        _record("b", {"selected_val_accuracy": 0.80, "selected_val_loss": 0.8, "final": 1, "test_accuracy": 0.10}),
        _record("c", {"selected_val_accuracy": 0.80, "selected_val_loss": 0.5, "final": 1}),  # tie: lower loss wins
        _record("d", {"epoch": 1}),  # reported, but never the metric
        _record("e", {}, checkpoint=False),  # never reported anything
        _record("f", {"selected_val_accuracy": 0.95, "selected_val_loss": 0.1}, error="boom"),
        _record("g", {"selected_val_accuracy": 0.99, "selected_val_loss": 0.1}),  # stopped early, no final report
        _record("h", {"skipped": 1, "selected_val_accuracy": float("nan")}),
    ]
    classify(records, "selected_val_accuracy", asha=True)
    assert [r.status for r in records] == ["completed", "completed", "completed", "failed", "failed", "failed", "stopped", "skipped"]
    assert "validation metric" in records[3].error
    assert select_best(records, "selected_val_accuracy", "max").trial_id == "c"
    # without ASHA, a trial that ends without its final report failed
    classify(records, "selected_val_accuracy", asha=False)
    assert records[6].status == "failed"
    # the loss metric picks the lowest loss
    assert select_best(records, "selected_val_loss", "min").trial_id == "c"
    assert select_best([records[3], records[4]], "selected_val_accuracy", "max") is None


# ------------------------------------------------------------------ real Tune on the shared local Ray


@pytest.fixture(scope="module")
def searched_run(ray_cluster, tmp_path_factory):
    from ddray.orchestration.driver import run

    out = tmp_path_factory.mktemp("tune") / "run"
    config = small_config()
    return run(config, out), out, config


@pytest.mark.ray
def test_search_picks_each_subdomains_best_trial_by_validation(searched_run):
    results, out, config = searched_run
    best = {e["subdomain"]: e for e in results["tune"]["best"]}
    assert sorted(best) == [0, 1]
    assert results["tune"]["trials"] == {"completed": 4}
    for sub in (0, 1):
        trials = pd.read_csv(out / "tune" / f"sub{sub:03d}_trials.csv")
        assert len(trials) == 2 and set(trials.status) == {"completed"}
        top = trials.sort_values(["selected_val_accuracy", "selected_val_loss", "trial_id"], ascending=[False, True, True]).iloc[0]
        assert top.trial_id == best[sub]["trial_id"] and bool(top.chosen)
        assert best[sub]["validation_accuracy"] == pytest.approx(top.selected_val_accuracy)
        assert set(best[sub]["config"]) == {"lr", "batch_size"}
        assert best[sub]["config"]["lr"] == pytest.approx(top["config/lr"])
        # the installed weights are the chosen trial's: predict loads them with its settings
        saved = torch.load(out / "checkpoints" / "local" / f"sub{sub:03d}.pt", weights_only=True)
        assert saved["settings"]["lr"] == pytest.approx(best[sub]["config"]["lr"])
        assert saved["settings"]["batch_size"] == best[sub]["config"]["batch_size"]
        assert results["local"][sub]["trial_id"] == best[sub]["trial_id"]
    assert (out / "tune" / "best_configs.json").exists() and (out / "tune" / "trials.csv").exists()
    saved = pd.read_json(out / "results.json", typ="series")
    assert [e["subdomain"] for e in saved["tune"]["best"]] == [0, 1]


@pytest.mark.ray
def test_every_trial_trained_on_its_own_subdomains_pixels(searched_run):
    """Guards against ray-project/ray#30091-style mix-ups: config, data and subdomain must agree per trial."""
    results, out, config = searched_run
    dataset = load_dataset(config.dataset, seed=config.seed, grid=config.decomposition.grid, overlap=0)
    subs = decompose(dataset.spatial_shape, config.decomposition.grid, 0)
    expected = {
        s.index: fingerprint(torch.from_numpy(np.ascontiguousarray(s.extract(dataset.x_train), dtype=np.float32)))
        for s in subs
    }
    assert len(set(expected.values())) == len(subs)
    trials = pd.read_csv(out / "tune" / "trials.csv")
    assert len(trials) == 4
    for _, row in trials.iterrows():
        assert row["config/subdomain"] == row["subdomain"]
        assert row["fingerprint"] == expected[int(row["subdomain"])]
    # and the reused actors really were reused across subdomains (that is where a mix-up would show)
    assert trials.pid.nunique() <= 2


@pytest.mark.ray
def test_predict_works_with_tuned_local_models(searched_run):
    from ddray.predict import TrainedRun

    results, out, config = searched_run
    dataset = load_dataset(config.dataset, seed=config.seed, grid=config.decomposition.grid, overlap=0)
    preds = TrainedRun(out).predict_array(dataset.x_test[:10], preprocessed=True)
    assert len(preds.decisions["average"]) == 10


@pytest.mark.ray
def test_asha_with_optuna_prunes_within_subdomains_only(ray_cluster, tmp_path):
    from ddray.orchestration.driver import run

    config = small_config(
        training={"epochs": 4, "batch_size": 32, "lr": 0.003},
        tune={"num_samples": 3, "search_alg": "optuna", "scheduler": "asha", "grace_period": 1,
              "space": {"lr": {"loguniform": [0.00003, 0.01]}}},
    )
    results = run(config, tmp_path / "run")
    assert len(results["tune"]["best"]) == 2
    for sub in (0, 1):
        trials = pd.read_csv(tmp_path / "run" / "tune" / f"sub{sub:03d}_trials.csv")
        assert len(trials) == 3 and set(trials.status) <= {"completed", "stopped"}
        assert trials[trials.chosen].status.tolist() == ["completed"]
        assert (trials.subdomain == sub).all()


@pytest.mark.ray
def test_subdomain_whose_trials_all_fail_is_an_error(ray_cluster, tmp_path):
    from ddray.orchestration.driver import run

    config = small_config(
        resources={"max_retries": 0},
        tune={"num_samples": 1, "space": {"optimizer": {"choice": ["no-such-optimizer"]}}},
    )
    with pytest.raises(SubdomainFailed, match=r"subdomain 0: none of its 1 Tune trials finished.*no-such-optimizer"):
        run(config, tmp_path / "run")
    assert not (tmp_path / "run" / "local" / "sub000.npz").exists()
    trials = pd.read_csv(tmp_path / "run" / "tune" / "sub000_trials.csv")
    assert trials.status.tolist() == ["failed"]
