"""TensorBoard event files and the MLflow run of ddray/tracking.py, read back with their own readers."""

from __future__ import annotations

import json
import logging
import math

import numpy as np
import pytest

from ddray import tracking
from ddray.config import parse_config
from ddray.run_dir import RunDir
from ddray.tracking import Tracking, flatten, scalars, write_events

HISTORY = [
    {"epoch": 1, "train_loss": 1.5, "val_loss": 1.25, "val_accuracy": 0.5, "epoch_seconds": 0.25},
    {"epoch": 2, "train_loss": 0.75, "val_loss": float("nan"), "val_accuracy": 0.625, "epoch_seconds": 0.5},
    {"epoch": 3, "train_loss": 0.5, "val_loss": 0.5, "val_accuracy": 0.875, "epoch_seconds": 0.25},
]
CONFIG = {
    "dataset": {"source": "digits"},
    "decomposition": {"grid": [1, 2], "overlap": 0},
    "training": {"epochs": 3},
}


def _events(folder):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def _run_dir(tmp_path) -> RunDir:
    run_dir = RunDir(tmp_path / "run", None, "track-01")
    run_dir.root.mkdir()
    return run_dir


def _results() -> dict:
    return {
        "local": [{"subdomain": 0, "test_accuracy": 0.75}, {"subdomain": 1, "test_accuracy": 0.5}],
        "aggregation": {"dnn": {"test_accuracy": 0.875}, "vote": {"test_accuracy": 0.625}},
        "timings_s": {"local_wall": 2.0},
    }


def test_scalars_of_a_history():
    points = scalars(HISTORY, test_accuracy=0.8)
    assert ("loss/train", 0.75, 2) in points and ("accuracy/val", 0.875, 3) in points
    assert not [p for p in points if p[0] == "loss/val" and p[2] == 2]  # NaN: no point
    assert points[-1] == ("accuracy/test", 0.8, 3)
    assert scalars([], None) == []


def test_event_file_has_every_epoch(tmp_path):
    folder = tmp_path / "tb" / "local" / "sub000"
    write_events(folder, HISTORY, test_accuracy=0.8)
    write_events(folder, HISTORY, test_accuracy=0.8)  # a resumed run rewrites: still one file, no epoch twice
    assert len(list(folder.glob("events.out.tfevents.*"))) == 1
    scalars_by_tag = _events(folder)
    assert scalars_by_tag["loss/train"] == [(1, 1.5), (2, 0.75), (3, 0.5)]
    assert scalars_by_tag["accuracy/val"] == [(1, 0.5), (2, 0.625), (3, 0.875)]
    assert scalars_by_tag["loss/val"] == [(1, 1.25), (3, 0.5)]
    assert scalars_by_tag["time/epoch_seconds"] == [(1, 0.25), (2, 0.5), (3, 0.25)]
    assert scalars_by_tag["accuracy/test"] == [(3, pytest.approx(0.8))]


def test_flatten_config():
    flat = flatten(parse_config(CONFIG).model_dump(mode="json"))
    assert flat["training.epochs"] == "3"
    assert flat["decomposition.grid"] == "[1, 2]"
    assert flat["dataset.source"] == "digits"


def test_tracking_writes_every_model_and_a_resumed_run_keeps_the_histories(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    run_dir = _run_dir(tmp_path)
    baseline = run_dir.baseline_summary("global")
    baseline.parent.mkdir()
    baseline.write_text(json.dumps({"name": "global", "test_accuracy": 0.9, "history": HISTORY[:2]}))
    t = Tracking(run_dir, parse_config(CONFIG))
    t.local(0, HISTORY, 0.75)
    t.local(1, HISTORY[:2], 0.5)
    t.dnn(HISTORY, np.array([0, 1, 1]), np.array([0, 1, 0]), 2, 0.875)
    t.baselines({"global": baseline})
    t.finish(_results(), run_dir.root)
    board = run_dir.tensorboard
    assert _events(board / "local" / "sub001")["accuracy/val"] == [(1, 0.5), (2, 0.625)]
    assert _events(board / "dnn")["accuracy/test"] == [(3, pytest.approx(0.875))]
    assert _events(board / "baselines" / "global")["loss/train"] == [(1, 1.5), (2, 0.75)]
    assert t.confusion.tolist() == [[1, 1], [0, 1]]
    saved = json.loads(run_dir.tracking.read_text())
    assert saved["mlflow_run_id"] is None
    assert set(saved["histories"]["local"]) == {"0", "1"} and len(saved["histories"]["dnn"]) == 3

    again = Tracking(run_dir)  # --resume: restored subdomains keep their curves
    assert again.histories["local"][1] == saved["histories"]["local"]["1"]
    assert again.histories["baselines"]["global"][1]["train_loss"] == 0.75
    again.close()


def test_tracking_never_fails_the_run(tmp_path, monkeypatch, caplog):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(tracking, "write_events", broken)
    run_dir = _run_dir(tmp_path)
    with caplog.at_level(logging.WARNING, logger="ddray.tracking"):
        t = Tracking(run_dir)
        t.local(0, HISTORY)
        t.local(1, HISTORY)
        t.finish(_results(), run_dir.root)
    assert caplog.text.count("disk full") == 1  # once per sink, not per model
    assert json.loads(run_dir.tracking.read_text())["histories"]["local"]["1"]  # the other sinks go on
    t._thread.join(5)
    assert not t._thread.is_alive()  # a finished run leaves no thread behind (ddray.run in a notebook, many times)
    t.local(2, HISTORY)  # after the end: ignored, never raises


def test_mlflow_set_but_not_installed_warns_once(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"file:{tmp_path / 'mlruns'}")
    monkeypatch.setattr(tracking, "find_spec", lambda name: None)
    with caplog.at_level(logging.WARNING, logger="ddray.tracking"):
        t = Tracking(_run_dir(tmp_path))
        t.local(0, HISTORY)
        t.finish(_results(), tmp_path)
    assert caplog.text.count("pip install ddray[mlflow]") == 1


def test_mlflow_run_logged_to_a_file_tracking_uri(tmp_path, monkeypatch, caplog):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    uri = f"file:{tmp_path / 'mlruns'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 refuses file stores without it
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "ddray-test")
    run_dir = _run_dir(tmp_path)
    (run_dir.root / "results.json").write_text(json.dumps(_results()))
    (run_dir.root / "learning_curves.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    with caplog.at_level(logging.WARNING, logger="ddray.tracking"):
        t = Tracking(run_dir, parse_config(CONFIG))
        t.local(0, HISTORY, 0.75)
        t.dnn(HISTORY[:2], np.array([0, 1]), np.array([0, 1]), 2, 0.875)
        t.finish(_results(), run_dir.root)
    assert "ddray tracking" not in caplog.text

    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("ddray-test").experiment_id])
    assert run.info.run_name == "track-01" and run.info.status == "FINISHED"
    assert run.data.tags["ddray.run_id"] == "track-01"
    assert run.data.params["training.epochs"] == "3" and run.data.params["decomposition.grid"] == "[1, 2]"
    history = client.get_metric_history(run.info.run_id, "local/sub000/val_accuracy")
    assert sorted((m.step, m.value) for m in history) == [(1, 0.5), (2, 0.625), (3, 0.875)]
    assert [m.step for m in client.get_metric_history(run.info.run_id, "dnn/train_loss")] == [1, 2]
    assert run.data.metrics["dnn/test_accuracy"] == 0.875
    assert run.data.metrics["local/sub001/test_accuracy"] == 0.5
    assert math.isclose(run.data.metrics["local/mean_test_accuracy"], 0.625)
    assert {a.path for a in client.list_artifacts(run.info.run_id)} == {"results.json", "learning_curves.png"}
    assert json.loads(run_dir.tracking.read_text())["mlflow_run_id"] == run.info.run_id

    resumed = Tracking(run_dir, parse_config(CONFIG))  # --resume continues the same MLflow run
    resumed.local(1, HISTORY)
    resumed.close("KILLED")
    (again,) = client.search_runs([run.info.experiment_id])
    assert again.info.run_id == run.info.run_id and again.info.status == "KILLED"
    assert "local/sub001/train_loss" in again.data.metrics


@pytest.mark.ray
def test_a_real_run_leaves_event_files_pictures_and_an_mlflow_run(ray_cluster, tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    from ddray.orchestration.driver import run

    uri = f"file:{tmp_path / 'mlruns'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    config = parse_config(
        {
            "dataset": {"source": "digits"},
            "decomposition": {"grid": [2, 2], "overlap": 0},
            "local_model": {"name": "small_cnn", "width": 0.25},
            "training": {"epochs": 2, "batch_size": 128},
            "aggregation": {"dnn": {"hidden": [16], "epochs": 4}},
            "resources": {"cpus_per_subdomain": 1, "gpus_per_subdomain": 0},
        }
    )
    out = tmp_path / "run"
    results = run(config, out, run_id="tracking-e2e")
    for i in range(4):
        assert [s for s, _ in _events(out / "tensorboard" / "local" / f"sub{i:03d}")["accuracy/val"]] == [1, 2]
    dnn = _events(out / "tensorboard" / "dnn")
    assert [s for s, _ in dnn["loss/train"]] == [1, 2, 3, 4]
    assert dnn["accuracy/test"] == [(4, pytest.approx(results["aggregation"]["dnn"]["test_accuracy"]))]
    for name in ("learning_curves.png", "confusion_matrix.png", "subdomain_accuracy.png", "accuracy.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    client = MlflowClient(uri)
    (mlflow_run,) = client.search_runs([client.get_experiment_by_name("ddray").experiment_id])
    assert mlflow_run.info.run_name == "tracking-e2e" and mlflow_run.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(mlflow_run.info.run_id, "local/sub003/val_accuracy")] == [1, 2]
    assert {"results.json", "confusion_matrix.png", "subdomain_accuracy.png"} <= {a.path for a in client.list_artifacts(mlflow_run.info.run_id)}
