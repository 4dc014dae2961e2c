"""Streaming coarse level (aggregation.streaming): the fill rule for missing subdomains, the stream's entries,
the background thread that skips stale sets, the streamed accuracy in progress.json, the REST view and
``ddray status``, the report; one small Ray run (with a multilevel net, then resumed)."""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest
from fastapi.testclient import TestClient

from ddray import plots
from ddray.aggregation import aggregate, stack_probabilities, train_dnn
from ddray.coarse.streaming import CoarseWorker, class_prior, fill_missing, fit_partial, stream_entry
from ddray.progress import ProgressTracker
from ddray.report import comparison_rows, notes, stream_milestones
from ddray.training.spec import DNNSpec

SPLITS = ("train", "val", "test")


def problem(n_sub: int = 4, k: int = 3, n: int = 160, seed: int = 0):
    """Local probabilities where each subdomain knows the label of a quarter of the samples (so more subdomains help)."""
    rng = np.random.default_rng(seed)
    local, labels = {s: {} for s in range(n_sub)}, {}
    for split, size in (("train", n), ("val", n // 2), ("test", n // 2)):
        y = rng.integers(0, k, size)
        labels[split] = y
        for s in range(n_sub):
            p = rng.dirichlet(np.ones(k), size=size).astype(np.float32)
            knows = rng.random(size) < 0.5
            p[knows] = 0.2 * p[knows]
            p[knows, y[knows]] += 0.8
            local[s][split] = p
    return local, labels


# -- the fill rule --------------------------------------------------------------
def test_class_prior_is_the_training_label_frequency():
    np.testing.assert_allclose(class_prior(np.array([0, 0, 1, 2, 2, 2]), 4), [2 / 6, 1 / 6, 3 / 6, 0], rtol=1e-6)
    assert class_prior(np.array([], dtype=int), 2).tolist() == [0.5, 0.5]


def test_missing_subdomains_are_the_prior_on_every_split():
    local, labels = problem()
    prior = class_prior(labels["train"], 3)
    sizes = {s: len(labels[s]) for s in SPLITS}
    filled = fill_missing({1: local[1], 3: local[3]}, 4, prior, sizes)
    for split in SPLITS:
        assert filled[split].shape == (sizes[split], 4, 3) and filled[split].dtype == np.float32
        for missing in (0, 2):  # identical at train, val and test time: one vector for every sample
            np.testing.assert_array_equal(filled[split][:, missing], np.broadcast_to(prior, (sizes[split], 3)))
        for done in (1, 3):
            np.testing.assert_array_equal(filled[split][:, done], local[done][split])


def test_with_every_subdomain_the_refit_is_the_flat_dnn():
    """Same spec, same seed, same inputs: the stream's final fit is the run's DNN (weights and accuracies)."""
    local, labels = problem()
    spec = DNNSpec(4, 3, hidden=(8,), epochs=5, lr=0.01, batch_size=32, seed=3)
    probs = {s: stack_probabilities([local[i][s] for i in range(4)]) for s in SPLITS}
    flat = train_dnn(probs, labels, spec)
    refit = fit_partial(local, labels, spec, class_prior(labels["train"], 3))
    for key, value in flat.model.state_dict().items():
        np.testing.assert_array_equal(refit.model.state_dict()[key].numpy(), value.numpy())
    aggregation, _ = aggregate(["dnn"], probs, labels, spec)
    final = stream_entry(list(range(4)), 12.0, aggregation["dnn"])
    assert final == {"subdomains_done": 4, "subdomains": [0, 1, 2, 3], "seconds": 12.0,
                     "validation_accuracy": refit.fit.best_val_accuracy, "test_accuracy": refit.test_accuracy}


# -- the background thread -------------------------------------------------------
def test_worker_fits_the_newest_set_only_and_leaves_the_complete_one_to_the_driver():
    local, labels = problem()
    spec = DNNSpec(4, 3, hidden=(8,), epochs=3, lr=0.01, batch_size=32)
    gate, first_seen = threading.Event(), threading.Event()
    entries = []

    def on_entry(entry):
        entries.append(entry)
        first_seen.set()
        gate.wait(timeout=60)  # holds the thread: the next sets arrive while it is busy

    ticks = iter(range(100))
    worker = CoarseWorker(labels=labels, num_subdomains=4, spec=spec, prior=class_prior(labels["train"], 3),
                          clock=lambda: float(next(ticks)), on_entry=on_entry)
    worker.offer({0: local[0]})
    assert first_seen.wait(timeout=60)
    worker.offer({0: local[0], 2: local[2]})
    worker.offer({0: local[0], 2: local[2], 1: local[1]})  # replaces the unfitted set of 2
    gate.set()
    for _ in range(600):
        if len(entries) == 2:
            break
        time.sleep(0.05)
    worker.offer(local)  # complete: the driver's own fit, not the thread's
    time.sleep(0.2)
    assert worker.close() == entries
    assert worker.skipped == 1 and worker.error is None
    assert [e["subdomains_done"] for e in entries] == [1, 3]
    assert entries[1]["subdomains"] == [0, 1, 2]
    assert [e["seconds"] for e in entries] == [0.0, 1.0]
    assert all(0 <= e["test_accuracy"] <= 1 and 0 <= e["validation_accuracy"] <= 1 for e in entries)


def test_worker_failure_is_reported_not_raised():
    local, labels = problem()
    spec = DNNSpec(4, 3, hidden=(8,), epochs=1)
    worker = CoarseWorker(labels=labels, num_subdomains=4, spec=spec, prior=np.array([0.5, 0.5]))  # a prior of 2 classes for 3
    worker.offer({0: local[0]})
    for _ in range(200):
        if worker.error:
            break
        time.sleep(0.05)
    worker.close()
    assert "ValueError" in worker.error


# -- progress.json, the REST job view, ddray status --------------------------------
def test_progress_shows_the_current_global_accuracy(tmp_path, capsys):
    from rich.console import Console

    tracker = ProgressTracker(tmp_path / "progress.json", 4, Console(file=open(tmp_path / "log.txt", "w"), width=200))
    tracker.phase("local_training")
    tracker.global_accuracy({"subdomains_done": 2, "subdomains": [0, 3], "seconds": 4.5, "validation_accuracy": 0.8, "test_accuracy": 0.75})
    snapshot = json.loads((tmp_path / "progress.json").read_text())
    assert snapshot["global"] | {"updated": 0} == {"subdomains_done": 2, "seconds": 4.5, "validation_accuracy": 0.8,
                                                  "test_accuracy": 0.75, "updated": 0}
    tracker.close()
    assert "global accuracy (DNN on 2/4 subdomains, the others at the class prior): test 0.7500" in (tmp_path / "log.txt").read_text()


def test_rest_view_and_status_show_the_streamed_accuracy(tmp_path, capsys):
    from api.deps import get_runner
    from api.main import create_app
    from api.settings import ServiceSettings
    from ddray.client.commands import _print_job, _progress_line
    from service_doubles import FakeRunner, tiny_job

    token = "stream-test-token-0123456789"
    auth = {"Authorization": f"Bearer {token}"}
    app = create_app(ServiceSettings(api_token=token, state_dir=tmp_path / "state", data_roots=[]))
    app.dependency_overrides[get_runner] = lambda: FakeRunner()
    with TestClient(app) as client:
        store = app.state.store
        job = store.create(tiny_job())
        store.claim_next("me")
        run = tmp_path / "jobdir" / "run"
        run.mkdir(parents=True)
        store.set_submission(job.id, submission_id=f"ddray-{job.id}", job_dir=str(run.parent), run_location=str(run))
        assert client.get(f"/jobs/{job.id}", headers=auth).json()["global_accuracy"] is None
        now = time.time()
        (run / "progress.json").write_text(json.dumps({
            "phase": "local_training", "started": now - 5, "updated": now,
            "subdomains": {"0": {"status": "done"}, "1": {"status": "running", "epoch": 2, "epochs": 3}},
            "global": {"subdomains_done": 1, "seconds": 3.25, "validation_accuracy": 0.5, "test_accuracy": 0.625, "updated": now},
            "phases": {"local_training": {"started": now - 3}},
        }))
        view = client.get(f"/jobs/{job.id}", headers=auth).json()
    assert view["global_accuracy"] == {"subdomains_done": 1, "seconds": 3.25, "validation_accuracy": 0.5, "test_accuracy": 0.625}
    assert "global accuracy 0.6250, val 0.5000 (DNN on 1/2 subdomains)" in _progress_line(view)
    _print_job(view)
    assert "Global accuracy 0.6250, val 0.5000 (DNN on 1/2 subdomains)" in capsys.readouterr().out


# -- the report -------------------------------------------------------------------
STREAM = [
    {"subdomains_done": 1, "subdomains": [2], "seconds": 3.0, "validation_accuracy": 0.5, "test_accuracy": 0.55},
    {"subdomains_done": 3, "subdomains": [0, 1, 2], "seconds": 7.0, "validation_accuracy": 0.8, "test_accuracy": 0.895},
    {"subdomains_done": 4, "subdomains": [0, 1, 2, 3], "seconds": 9.5, "validation_accuracy": 0.9, "test_accuracy": 0.9},
]


def test_report_rows_notes_and_stream_plot(tmp_path):
    results = {
        "local": [{"subdomain": i, "test_accuracy": 0.5, "parameters": 100, "train_seconds": 2.0, "finished_s": t}
                  for i, t in enumerate((6.0, 6.5, 2.5, 9.0))],
        "aggregation": {
            "dnn": {"test_accuracy": 0.9, "parameters": 50, "train_wall_s": 0.5}, "average": {"test_accuracy": 0.7, "parameters": 0},
            "stream": STREAM,
            "multilevel": {"test_accuracy": 0.88, "validation_accuracy": 0.86, "parameters": 60, "flat_dnn_parameters": 50,
                           "largest_coarse_parameters": 20, "levels": [[2, 1]], "train_wall_s": 0.25,
                           "regions": [{"level": 1, "region": 0, "subdomains": [0, 2], "test_accuracy": 0.8, "parameters": 20},
                                       {"level": 1, "region": 1, "subdomains": [1, 3], "test_accuracy": 0.6, "parameters": 20}]},
        },
        "timings_s": {"local_wall": 9.0},
        "config": {"decomposition": {"grid": [2, 2]}},
    }
    marks = stream_milestones(STREAM)
    assert (marks["first"]["seconds"], marks["within_1_point"]["seconds"], marks["final"]["seconds"]) == (3.0, 7.0, 9.5)
    rows = {r["model"]: r for r in comparison_rows(results)}
    assert rows["dnn streamed 1/4"]["test_accuracy"] == 0.55 and rows["dnn streamed 1/4"]["time_to_model_s"] == 3.0
    assert rows["multilevel"]["total_parameters"] == 460 and rows["multilevel"]["time_to_model_s"] == 9.25
    text = " ".join(notes(results))
    assert "within 1 point of the final 0.9000 at 7.0 s" in text and "0: 0.800, 1: 0.600" in text
    series = plots.stream_series(results)
    assert series["seconds"] == [3.0, 7.0, 9.5] and series["done"] == [1, 3, 4] and series["finished"] == [2.5, 6.0, 6.5, 9.0]
    assert plots.write_pictures(results, tmp_path) == [tmp_path / "subdomain_accuracy.png", tmp_path / "stream.png"]
    assert (tmp_path / "stream.png").read_bytes()[:4] == b"\x89PNG"


# -- on Ray -----------------------------------------------------------------------
@pytest.mark.ray
def test_streamed_and_multilevel_run_then_resumed(ray_cluster, tmp_path):
    from ddray.config import parse_config
    from ddray.orchestration.driver import run
    from ddray.predict import TrainedRun

    config = parse_config({
        "dataset": {"source": "synthetic", "kind": "count", "samples": 240, "size": [16, 16]},
        "decomposition": {"grid": [2, 2]},
        "local_model": {"name": "small_cnn", "width": 0.25},
        "training": {"epochs": 2, "batch_size": 32},
        "aggregation": {"dnn": {"hidden": [16], "epochs": 10}, "streaming": True, "levels": [[1, 2]]},
    })
    out = tmp_path / "run"
    results = run(config, out)
    agg = results["aggregation"]
    stream = agg["stream"]
    done = [e["subdomains_done"] for e in stream]
    assert done == sorted(set(done)) and done[-1] == 4 and 1 <= len(stream) <= 4
    assert {k: stream[-1][k] for k in ("test_accuracy", "validation_accuracy")} == {
        "test_accuracy": agg["dnn"]["test_accuracy"], "validation_accuracy": agg["dnn"]["validation_accuracy"]}
    assert [e["seconds"] for e in stream] == sorted(e["seconds"] for e in stream)
    multi = agg["multilevel"]
    assert [r["subdomains"] for r in multi["regions"]] == [[0, 1], [2, 3]] and multi["global"]["inputs"] == 2
    assert json.loads((out / "results.json").read_text())["aggregation"]["stream"] == stream
    assert (out / "stream.png").read_bytes()[:4] == b"\x89PNG"
    assert ("| dnn streamed " in (out / "results.md").read_text()) == (len(stream) > 1)
    assert "| multilevel | aggregation |" in (out / "results.md").read_text()
    progress = json.loads((out / "progress.json").read_text())
    assert progress["global"]["subdomains_done"] == 4 and progress["global"]["test_accuracy"] == agg["dnn"]["test_accuracy"]
    trained = TrainedRun(out)
    from ddray.data import load_dataset

    data = load_dataset(config.dataset, seed=config.seed, grid=config.decomposition.grid)
    predictions = trained.predict_array(data.x_test, preprocessed=True, warn=False)
    assert np.mean(predictions.decisions["multilevel"] == data.y_test) == pytest.approx(multi["test_accuracy"], abs=1e-9)

    # resume after losing subdomain 3: the three restored ones count as done at the start, the stream goes on
    (out / "local" / "sub003.npz").unlink()
    (out / "results.json").unlink()
    resumed = run(config, out, resume=True)
    again = resumed["aggregation"]["stream"]
    kept = [e for e in stream if 3 not in e["subdomains"]]
    assert again[: len(kept)] == kept  # the first session's refits that do not need subdomain 3 are kept
    assert [e["subdomains_done"] for e in again[len(kept):]] == [3, 4]  # restored ones count at once
    assert again[len(kept)]["subdomains"] == [0, 1, 2]
    assert again[-1]["test_accuracy"] == resumed["aggregation"]["dnn"]["test_accuracy"]


@pytest.mark.ray
def test_streaming_with_tune_counts_a_subdomain_done_when_its_best_trial_is_chosen(ray_cluster, tmp_path):
    from ddray.config import parse_config
    from ddray.orchestration.driver import run

    config = parse_config({
        "dataset": {"source": "synthetic", "kind": "count", "samples": 200, "size": [16, 16]},
        "decomposition": {"grid": [1, 3]},
        "local_model": {"name": "small_cnn", "width": 0.25},
        "training": {"epochs": 1, "batch_size": 32},
        "aggregation": {"dnn": {"hidden": [8], "epochs": 5}, "streaming": True},
        "tune": {"num_samples": 1, "space": {"lr": {"choice": [0.003]}}},
    })
    results = run(config, tmp_path / "tuned")
    stream = results["aggregation"]["stream"]
    done = [e["subdomains_done"] for e in stream]
    assert done == sorted(set(done)) and done[-1] == 3
    assert stream[-1]["test_accuracy"] == results["aggregation"]["dnn"]["test_accuracy"]
    chosen = {e["subdomain"]: e["finished_s"] for e in results["local"]}  # set by keep once the best trial is chosen
    assert all(chosen[i] <= e["seconds"] for e in stream[:-1] for i in e["subdomains"])
