"""tune.allocation: adaptive. The rule (pure, synthetic trial histories), the searcher's rounds without a
cluster, the config keys, the results fields and plot, and one tiny adaptive search on the shared Ray."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ddray.config import ConfigError, parse_config
from ddray.orchestration.tune.allocation import allocate, assess, expected_gain, expected_max, gains

CHANCE, N_VAL = 0.25, 200  # four balanced classes, 200 validation samples (noise sd ~0.031)


def test_expected_max_of_normals_matches_known_values():
    assert expected_max(1) == 0.0
    assert expected_max(2) == pytest.approx(1 / np.sqrt(np.pi), abs=1e-4)  # 0.5642
    assert expected_max(3) == pytest.approx(1.5 / np.sqrt(np.pi), abs=1e-4)  # 0.8463
    steps = np.diff([expected_max(n) for n in range(1, 12)])
    assert np.all(steps > 0) and np.all(np.diff(steps) < 0)  # each further trial is worth less


def test_subdomain_at_chance_gets_no_more_than_the_minimum():
    # validation noise around 0.25 for every configuration: spread from noise alone is not dependence on the config
    at_chance = [0.255, 0.22, 0.27, 0.245]
    state = assess(at_chance, 4, chance=CHANCE, n_val=N_VAL)
    assert state.at_chance and expected_gain(state) == 0.0
    plan = allocate({0: at_chance, 1: [0.6, 0.8], 2: [0.7, 0.72]}, {0: 4, 1: 2, 2: 2}, 8, chance=CHANCE, n_val=N_VAL)
    assert 0 not in plan and len(plan) == 8


def test_configuration_dependent_subdomain_gets_more_than_a_flat_one():
    histories = {0: [0.40, 0.85], 1: [0.70, 0.71], 2: [0.24, 0.26]}
    g = gains(histories, chance=CHANCE, n_val=N_VAL)
    assert g[0] > g[1] > 0.0 == g[2]
    plan = allocate(histories, {0: 2, 1: 2, 2: 2}, 4, chance=CHANCE, n_val=N_VAL)
    assert plan.count(0) > plan.count(1) and 2 not in plan
    assert plan[0] == 0


def test_diminishing_returns_spread_trials_and_ties_go_to_lower_index():
    same = [0.5, 0.7]
    assert allocate({3: same, 1: same}, {3: 2, 1: 2}, 4, chance=CHANCE, n_val=N_VAL) == [1, 3, 1, 3]
    # a large spread is worth several trials before a small one is worth one
    plan = allocate({0: [0.3, 0.9], 1: [0.6, 0.65]}, {0: 2, 1: 2}, 3, chance=CHANCE, n_val=N_VAL)
    assert plan == [0, 0, 0]


def test_no_evidence_anywhere_falls_back_to_uniform_and_saturation_leaves_trials_unspent():
    # at chance, all failed, saturated: no subdomain shows a gain, so the budget is spread (fewest trials
    # first) over those not already at 100 %
    # nothing above chance anywhere (at chance, or all failed): too little evidence, uniform, fewest trials first
    assert allocate({0: [0.25, 0.26, 0.24], 1: [None, None]}, {0: 3, 1: 2}, 3, chance=CHANCE, n_val=N_VAL) == [1, 0, 1]
    # the only subdomain above chance is at 100 %: the at-chance and failed ones still get nothing; unspent
    histories = {0: [0.25, 0.26], 1: [None, None], 2: [1.0, 1.0]}
    assert allocate(histories, {0: 2, 1: 2, 2: 2}, 5, chance=CHANCE, n_val=N_VAL) == []
    # failed trials count as spent but give no evidence; the other results still decide
    assert assess([None, 0.8, 0.6], 3, chance=CHANCE, n_val=N_VAL).results == (0.8, 0.6)


def test_gain_is_capped_by_headroom():
    state = assess([0.99, 0.5], 2, chance=CHANCE, n_val=N_VAL)
    assert expected_gain(state) == pytest.approx(0.01)


def test_config_keys_and_errors_naming_the_key():
    cfg = parse_config({"tune": {"num_samples": 4, "allocation": "adaptive", "min_trials_per_subdomain": 1}})
    assert cfg.tune.allocation == "adaptive" and cfg.tune.min_trials_per_subdomain == 1
    assert parse_config({"tune": {}}).tune.allocation == "uniform"
    with pytest.raises(ConfigError, match="tune.allocation"):
        parse_config({"tune": {"allocation": "greedy"}})
    with pytest.raises(ConfigError, match="tune.min_trials_per_subdomain"):
        parse_config({"tune": {"num_samples": 2, "allocation": "adaptive", "min_trials_per_subdomain": 3}})
    # a grid multiplies the per-subdomain budget, so the same minimum fits
    parse_config({"tune": {"num_samples": 2, "allocation": "adaptive", "min_trials_per_subdomain": 3,
                           "space": {"lr": {"grid": [0.001, 0.01]}}}})


def test_rest_jobs_accept_the_allocation_keys():
    from api.schemas import JobCreate

    job = JobCreate.model_validate({"config": {"tune": {"num_samples": 3, "allocation": "adaptive", "min_trials_per_subdomain": 2}}})
    assert job.config.tune.allocation == "adaptive"
    with pytest.raises(Exception, match="min_trials_per_subdomain"):
        JobCreate.model_validate({"config": {"tune": {"num_samples": 1, "allocation": "adaptive"}}})


def _searcher(**kw):
    from ray import tune

    from ddray.orchestration.tune.adaptive import AdaptiveSearcher

    args = dict(num_samples=3, algorithm="random", metric="selected_val_accuracy", mode="max",
                min_trials=1, chance=CHANCE, n_val=N_VAL, window=2)
    args.update(kw)
    return AdaptiveSearcher([0, 1, 2], {"lr": tune.loguniform(1e-4, 1e-2)}, **args)


def test_searcher_runs_rounds_within_the_budget_and_waits_for_each_round():
    from ray.tune.search import Searcher

    s = _searcher()
    accuracy = {0: [0.25, 0.26, 0.24, 0.25, 0.25], 1: [0.5, 0.9, 0.6, 0.8, 0.7, 0.75, 0.7], 2: [0.7, 0.7, 0.71, 0.7]}
    seen: dict[int, int] = {0: 0, 1: 0, 2: 0}
    n, rounds = 0, []
    while True:
        running = []
        while (c := s.suggest(f"t{n}")) not in (None, Searcher.FINISHED):
            running.append((f"t{n}", c))
            n += 1
        if c == Searcher.FINISHED:
            break
        assert running, "a round with nothing running must not wait"
        rounds.append([c["subdomain"] for _, c in running])
        assert {c["round"] for _, c in running} == {len(rounds) - 1} and all("lr" in c for _, c in running)
        for tid, c in running:
            i = c["subdomain"]
            s.on_trial_complete(tid, {"selected_val_accuracy": accuracy[i][seen[i]]})
            seen[i] += 1
    assert rounds[0] == [0, 1, 2]  # round 0: the minimum for every subdomain
    assert all(len(r) <= 2 for r in rounds[1:])  # rounds of W trials
    assert sum(seen.values()) == s.budget == 9
    assert seen[0] == 1 and seen[1] > seen[2]  # at chance: the minimum only; config-dependent: the most


def test_searcher_state_pickles_across_a_restore(tmp_path):
    s = _searcher()
    first = [s.suggest(f"t{k}") for k in range(3)]
    s.save(str(tmp_path / "searcher.pkl"))
    t = _searcher(seed=99)
    t.restore(str(tmp_path / "searcher.pkl"))
    assert t.open == {"t0", "t1", "t2"} and t.plan == [] and t.suggest("t3") is None
    for k, c in enumerate(first):
        t.on_trial_complete(f"t{k}", {"selected_val_accuracy": [0.25, 0.5, 0.7][c["subdomain"]]})
    nxt = t.suggest("t3")
    assert nxt["round"] == 1 and nxt["subdomain"] in (1, 2)


def test_results_rows_counts_and_allocation_plot(tmp_path):
    from ddray import plots
    from ddray.orchestration.tune.selection import TrialRecord, per_subdomain_counts, trial_row

    rec = TrialRecord("t0", 1, {"lr": 0.01}, {"selected_val_accuracy": 0.8, "time_total_s": 2.5, "final": 1}, None, None, round=2)
    row = trial_row(rec)
    assert row == {"trial_id": "t0", "subdomain": 1, "round": 2, "config": {"lr": 0.01}, "validation_accuracy": 0.8,
                   "seconds": 2.5, "status": "completed"}
    assert per_subdomain_counts([row, row, {**row, "subdomain": 3}], 4) == [0, 2, 0, 1]
    results = {
        "decomposition": {"grid": [2, 2]},
        "dataset": {"spatial_shape": [16, 16]},
        "tune": {"allocation": "adaptive", "trials_per_subdomain": [2, 5, 2, 3],
                 "best": [{"subdomain": i, "validation_accuracy": a} for i, a in enumerate([0.25, 0.9, 0.26, 0.7])]},
    }
    best, trials = plots.tune_grids(results)
    assert trials[0, 1] == 5 and best[1, 1] == pytest.approx(0.7)
    plots.plot_tune_allocation(results, tmp_path / plots.TUNE_PNG)
    assert (tmp_path / plots.TUNE_PNG).stat().st_size > 1000


# ------------------------------------------------------------------ a tiny adaptive search on the shared Ray


def adaptive_config(*, epochs: int, concurrent: int):
    """Two subdomains, a budget of 4 trials, at least 1 each: the smallest adaptive search there is."""
    return parse_config({
        "dataset": {"source": "synthetic", "kind": "count", "samples": 200, "size": [16, 16]},
        "decomposition": {"grid": [1, 2]},
        "local_model": {"name": "small_cnn", "width": 0.25},
        "training": {"epochs": epochs, "batch_size": 32},
        "aggregation": {"methods": ["average"]},
        "tune": {"num_samples": 2, "allocation": "adaptive", "min_trials_per_subdomain": 1,
                 "max_concurrent_trials": concurrent, "space": {"lr": {"loguniform": [0.0003, 0.01]}}},
    })


@pytest.mark.ray
def test_adaptive_search_end_to_end(ray_cluster, tmp_path):
    from ddray.orchestration.driver import run

    config = adaptive_config(epochs=2, concurrent=2)
    results = run(config, tmp_path / "run")
    t = results["tune"]
    assert t["allocation"] == "adaptive" and t["budget"] == 4
    assert sum(t["trials_per_subdomain"]) + t["unspent"] == 4 and min(t["trials_per_subdomain"]) >= 1
    assert len(t["trials"]) == sum(t["trials_per_subdomain"])
    for row in t["trials"]:
        assert set(row) >= {"subdomain", "round", "config", "validation_accuracy", "seconds"}
        assert set(row["config"]) == {"lr"} and row["seconds"] > 0
    assert sorted(r["round"] for r in t["trials"])[:2] == [0, 0]
    saved = json.loads((tmp_path / "run" / "results.json").read_text())["tune"]
    assert saved["trials_per_subdomain"] == t["trials_per_subdomain"]
    assert (tmp_path / "run" / "tune_allocation.png").exists()


@pytest.mark.ray
def test_interrupted_adaptive_search_resumes_its_rounds(ray_cluster, tmp_path, monkeypatch):
    import os
    import signal

    from ddray.orchestration import driver
    from ddray.orchestration.tune import SearchInterrupted

    config = adaptive_config(epochs=3, concurrent=1)
    out = tmp_path / "run"
    original_update = driver.ProgressTracker.update
    started: list[str] = []

    def interrupt_in_round_1(self, event):  # the third trial is the first of round 1 (one trial at a time)
        original_update(self, event)
        if event.get("status") == "running" and event.get("trial") not in started:
            started.append(event["trial"])
        if len(started) == 3 and event.get("trial") == started[2] and event.get("epoch", 0) >= 2:
            os.kill(os.getpid(), signal.SIGUSR1)

    monkeypatch.setattr(driver.ProgressTracker, "update", interrupt_in_round_1)
    with pytest.raises(SearchInterrupted):
        driver.run(config, out)
    monkeypatch.setattr(driver.ProgressTracker, "update", original_update)
    results = driver.run(config, out, resume=True)
    t = results["tune"]
    assert t["restored"] is True and t["budget"] == 4
    assert sum(t["trials_per_subdomain"]) + t["unspent"] == 4 and len(t["trials"]) == sum(t["trials_per_subdomain"])
    rounds = [r["round"] for r in t["trials"]]
    assert rounds.count(0) == 2 and max(rounds) >= 1  # round 0 from the first session, later rounds after the resume
    assert [e["subdomain"] for e in t["best"]] == [0, 1]
