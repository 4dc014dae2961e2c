"""Per-subdomain Ray Tune search: samplers, per-subdomain search and pruning, isolation, end to end.

The selection rules themselves (statuses, ties, modes) are tested without Ray in test_tune_selection.py."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from ray import tune
from ray.tune.schedulers import TrialScheduler
from ray.tune.search import Searcher

from ddray.config import ConfigError, parse_config
from ddray.data import load_dataset
from ddray.decomposition import decompose
from ddray.errors import SubdomainFailed
from ddray.orchestration.tune.scheduler import PerSubdomainScheduler
from ddray.orchestration.tune.searcher import SubdomainSearcher
from ddray.orchestration.tune.space import coerce_overrides, search_space, trials_per_subdomain
from ddray.run_dir import RunDir
from ddray.training.local import fingerprint
from ddray.training.spec import SpecError, training_spec

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
    # a width outside (0, 1] is refused with the config, before any trial starts ...
    with pytest.raises(ConfigError, match=r"tune.space.width: .*1.5.* outside \(0, 1\]"):
        parse_config({"tune": {"space": {"width": {"uniform": [0.5, 1.5]}}}})
    # ... and a trial that samples one anyway (a custom space) fails naming the setting
    with pytest.raises(SpecError, match="narrow tune.space.width"):
        training_spec(cfg, num_classes=2, in_channels=1).with_overrides(coerce_overrides({"width": 1.5}))


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
    # the same loss in subdomain 1 beats its own rival there: judged on subdomain 1's scale, it goes on
    rival = trial("b1", 1)
    sched.on_trial_add(None, rival)
    assert sched.on_trial_result(None, rival, {"epoch": 1, "val_loss": 5.0}) == TrialScheduler.CONTINUE
    assert set(sched._by_subdomain) == {0, 1}


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
    assert results["tune"]["trial_status"] == {"completed": 4}
    for sub in (0, 1):
        trials = pd.read_csv(out / "tune" / f"sub{sub:03d}_trials.csv")
        assert len(trials) == 2 and set(trials.status) == {"completed"}
        top = trials.sort_values(["selected_val_accuracy", "selected_val_loss", "trial_id"], ascending=[False, True, True]).iloc[0]
        assert top.trial_id == best[sub]["trial_id"] and bool(top.chosen)
        assert set(best[sub]["config"]) == {"lr", "batch_size"}
        # the sampled config came from the tune: space
        assert 0.0003 <= best[sub]["config"]["lr"] <= 0.01 and best[sub]["config"]["batch_size"] in (32, 64)
        # the installed local result (what aggregation and predict use) is the chosen trial's selected epoch
        local = results["local"][sub]
        assert local["validation_accuracy"] == pytest.approx(best[sub]["validation_accuracy"])
        assert local["best_epoch"] == top.selected_epoch and local["tune_config"] == best[sub]["config"]
        # the installed weights are the chosen trial's: predict loads them with its training spec
        _, spec = RunDir(out).load_local_model(sub)
        assert spec.optimizer.lr == pytest.approx(best[sub]["config"]["lr"])
        assert spec.batch_size == best[sub]["config"]["batch_size"]
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
    assert trials["config/subdomain"].value_counts().to_dict() == {0: 2, 1: 2}  # num_samples trials each
    for _, row in trials.iterrows():
        assert row["fingerprint"] == expected[int(row["config/subdomain"])]
    # and the reused actors really were reused across subdomains (that is where a mix-up would show)
    assert trials.pid.nunique() <= 2
    assert (trials.groupby("pid")["config/subdomain"].nunique() > 1).any()


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
    fingerprints = {}
    for sub in (0, 1):
        trials = pd.read_csv(tmp_path / "run" / "tune" / f"sub{sub:03d}_trials.csv")
        assert len(trials) == 3 and set(trials.status) <= {"completed", "stopped"}
        assert trials[trials.chosen].status.tolist() == ["completed"]
        # completed trials ran every epoch; stopped ones were cut short by ASHA
        assert (trials[trials.status == "completed"].epoch == 4).all()
        assert (trials[trials.status == "stopped"].epoch < 4).all()
        fingerprints[sub] = set(trials.fingerprint)
    # each subdomain's file lists only trials that trained on that subdomain's pixels
    assert all(len(fp) == 1 for fp in fingerprints.values()) and fingerprints[0] != fingerprints[1]


@pytest.mark.ray
def test_subdomain_whose_trials_all_fail_is_an_error(ray_cluster, tmp_path):
    from ddray.orchestration.driver import run

    # trials that fail at run time: a CUDA device is required and the session's GPU is a logical one
    # (a bad value in tune.space no longer gets this far: the config refuses it)
    with pytest.raises(ConfigError, match="no-such-optimizer"):
        small_config(tune={"num_samples": 1, "space": {"optimizer": {"choice": ["no-such-optimizer"]}}})
    if torch.cuda.is_available():
        pytest.skip("needs a machine without CUDA: its trials must fail for want of a device")
    config = small_config(
        resources={"max_retries": 0, "gpus_per_subdomain": 0.5, "require_cuda": True},
        tune={"num_samples": 1, "space": {"lr": {"choice": [0.01]}}},
    )
    with pytest.raises(SubdomainFailed, match=r"subdomain 0: none of its 1 Tune trials finished.*require_cuda"):
        run(config, tmp_path / "run")
    assert not (tmp_path / "run" / "local" / "sub000.npz").exists()
    trials = pd.read_csv(tmp_path / "run" / "tune" / "sub000_trials.csv")
    assert trials.status.tolist() == ["failed"]
