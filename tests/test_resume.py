"""``ddray run --resume``: an interrupted Tune search continues; nothing finished is trained again."""

from __future__ import annotations

import json
import os
import signal

import pandas as pd
import pytest

from ddray.config import parse_config
from ddray.orchestration import driver
from ddray.orchestration.tune import SearchInterrupted


def tune_config():
    return parse_config(
        {
            "dataset": {"source": "synthetic", "kind": "count", "samples": 300, "size": [16, 16]},
            "decomposition": {"grid": [1, 2]},
            "local_model": {"name": "small_cnn", "width": 0.25},
            "training": {"epochs": 4, "batch_size": 32, "lr": 0.003},
            "aggregation": {"methods": ["average", "vote"]},
            "tune": {
                "max_concurrent_trials": 1,  # trials in a fixed order: subdomain 0's, then subdomain 1's
                "num_samples": 2,
                "search_alg": "random",
                "scheduler": "none",
                "space": {"lr": {"loguniform": [0.0003, 0.01]}, "batch_size": {"choice": [32, 64]}},
            },
        }
    )


@pytest.mark.ray
def test_interrupted_search_resumes_without_retraining_finished_subdomains(ray_cluster, tmp_path, monkeypatch):
    out = tmp_path / "run"
    config = tune_config()
    original_update = driver.ProgressTracker.update

    def interrupt_in_subdomain_1(self, event):
        original_update(self, event)
        if event.get("subdomain") == 1 and event.get("status") == "running" and event.get("epoch", 0) >= 2:
            # what Ctrl-C does: Tune catches the signal, saves its state and stops the trials. At epoch 2
            # Tune has registered the epoch-1 checkpoint (the newest one is saved asynchronously)
            assert signal.getsignal(signal.SIGUSR1) not in (signal.SIG_DFL, signal.SIG_IGN, None)
            os.kill(os.getpid(), signal.SIGUSR1)

    monkeypatch.setattr(driver.ProgressTracker, "update", interrupt_in_subdomain_1)
    with pytest.raises(SearchInterrupted):
        driver.run(config, out)
    assert (out / "local" / "sub000.npz").exists(), "subdomain 0 finished before the interruption"
    assert not (out / "local" / "sub001.npz").exists()
    assert not (out / "results.json").exists()
    done_before = {p.name: p.stat().st_mtime_ns for p in [out / "local" / "sub000.npz", out / "checkpoints" / "local" / "sub000.pt"]}
    first_best = json.loads((out / "tune" / "best_configs.json").read_text())["best"]
    wall_before = json.loads((out / "timings.json").read_text())["local_wall"]  # up to subdomain 0's end
    assert wall_before > 0
    assert [e["subdomain"] for e in first_best] == [0]

    events = []

    def record(self, event):
        events.append(dict(event))
        original_update(self, event)

    monkeypatch.setattr(driver.ProgressTracker, "update", record)
    results = driver.run(config, out, resume=True)

    # nothing of subdomain 0 ran again: no epoch events, files untouched, reported as restored
    assert not [e for e in events if e.get("subdomain") == 0 and e.get("status") == "running"]
    assert {"subdomain": 0, "status": "restored"}.items() <= next(e for e in events if e.get("subdomain") == 0).items()
    assert {p.name: p.stat().st_mtime_ns for p in [out / "local" / "sub000.npz", out / "checkpoints" / "local" / "sub000.pt"]} == done_before
    # subdomain 1 continued its Tune experiment from the last checkpoint
    assert results["tune"]["restored"] is True
    trials = pd.read_csv(out / "tune" / "sub001_trials.csv")
    assert len(trials) == 2 and set(trials.status) == {"completed"}
    assert trials.resumed_from_epoch.max() >= 1
    assert [e["subdomain"] for e in results["tune"]["best"]] == [0, 1]
    assert results["tune"]["best"][0] == first_best[0]
    assert results["timings_s"]["local_wall"] > wall_before  # earlier sessions' time is counted, not lost
    assert json.loads((out / "results.json").read_text())["aggregation"]["average"]["test_accuracy"] >= 0.0
