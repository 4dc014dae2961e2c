"""The whole pipeline on the shared local Ray: real actors, real files, real accuracy."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from ddray.config import parse_config
from ddray.errors import ResourceError
from ddray.orchestration.driver import run
from ddray.predict import TrainedRun
from ddray.run_dir import RunDirError


ROOT = Path(__file__).resolve().parents[1]


def count_config(**overrides):
    cfg = {
        "dataset": {"source": "synthetic", "kind": "count", "samples": 480, "size": [16, 16]},
        "decomposition": {"grid": [2, 2], "overlap": 0},
        "local_model": {"name": "small_cnn", "width": 0.25},
        "training": {"epochs": 6, "batch_size": 32, "lr": 0.01},
        "aggregation": {"dnn": {"hidden": [32], "epochs": 60, "lr": 0.01}},
        "resources": {"cpus_per_subdomain": 1, "gpus_per_subdomain": 0},
    }
    for key, value in overrides.items():
        cfg[key] = {**cfg.get(key, {}), **value} if isinstance(value, dict) else value
    return parse_config(cfg)


@pytest.fixture(scope="module")
def digits_run(ray_cluster, tmp_path_factory):
    out = tmp_path_factory.mktemp("digits") / "run"
    config = parse_config(
        {
            "dataset": {"source": "digits"},
            "decomposition": {"grid": [2, 2], "overlap": 2},
            "local_model": {"name": "small_cnn", "width": 0.5},
            "training": {"epochs": 8, "batch_size": 64, "lr": 0.003},
            "aggregation": {"dnn": {"hidden": [64], "epochs": 60}},
        }
    )
    return run(config, out), out


@pytest.mark.ray
def test_digits_results_folder_is_complete(digits_run):
    results, out = digits_run
    saved = json.loads((out / "results.json").read_text())
    assert saved["aggregation"]["dnn"]["test_accuracy"] >= 0.92
    assert [e["subdomain"] for e in saved["local"]] == [0, 1, 2, 3]
    assert all(0.3 < e["test_accuracy"] <= 1 for e in saved["local"])
    assert set(saved["aggregation"]) == {"dnn", "average", "vote"}
    for key in ("local_wall", "aggregation_wall", "total_wall"):
        assert saved["timings_s"][key] > 0
    assert saved["versions"]["ray"].startswith("2.60")
    assert saved["config"]["decomposition"]["overlap"] == 2
    for i in range(4):
        assert (out / "checkpoints" / "local" / f"sub{i:03d}.pt").stat().st_size > 0
    assert (out / "checkpoints" / "dnn.pt").exists()
    assert (out / "accuracy.png").read_bytes()[:4] == b"\x89PNG"
    assert "| dnn | aggregation |" in (out / "results.md").read_text()
    progress = json.loads((out / "progress.json").read_text())
    assert progress["phase"] == "done"
    assert {v["status"] for v in progress["subdomains"].values()} == {"done"}
    assert all(v["epoch"] == 8 for v in progress["subdomains"].values())


@pytest.mark.ray
def test_predict_replays_the_trained_decision(digits_run, tmp_path):
    """Classifying the test images from a raw npz gives the DNN's reported test accuracy."""
    from sklearn.datasets import load_digits

    from ddray.config import DatasetConfig
    from ddray.data import load_dataset

    results, out = digits_run
    ds = load_dataset(DatasetConfig(source="digits"), seed=0, grid=[2, 2], overlap=2)
    trained = TrainedRun(out)
    preds = trained.predict_array(ds.x_test, preprocessed=True)
    dnn_acc = float((preds.decisions["dnn"] == ds.y_test).mean())
    assert dnn_acc == pytest.approx(results["aggregation"]["dnn"]["test_accuracy"], abs=1e-9)
    assert float((preds.decisions["vote"] == ds.y_test).mean()) == pytest.approx(results["aggregation"]["vote"]["test_accuracy"])

    # the same through the CLI on raw 8x8 digits in an npz file
    raw = load_digits()
    x = (raw.images[:20] / 16.0).astype(np.float32)[:, None]
    np.savez(tmp_path / "new.npz", x=x)
    proc = subprocess.run([sys.executable, "-m", "ddray", "predict", str(out), str(tmp_path / "new.npz"), "--json"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    assert len(rows) == 20 and rows[0]["input"] == "x[0]"
    hits = sum(row["dnn"] == str(label) for row, label in zip(rows, raw.target[:20]))
    assert hits >= 16


@pytest.mark.ray
def test_rerun_into_finished_folder_is_refused_and_keeps_files(digits_run):
    results, out = digits_run
    before = (out / "results.json").read_bytes()
    with pytest.raises(RunDirError, match="already holds a ddray run"):
        run(parse_config({"dataset": {"source": "digits"}}), out)
    assert (out / "results.json").read_bytes() == before


@pytest.mark.ray
def test_the_driver_leaves_its_torch_work_to_the_last_worker_and_gets_the_same_dnn(ray_cluster, tmp_path):
    """The DNN fit and the parameter counts run on the local phase's last worker, where torch's lazy
    imports are loaded: the driver (a new interpreter joining the test cluster, like a Ray job)
    never imports what an optimizer's first step imports (torch._dynamo, sympy), a second or two
    of CPU that competed with the local CNNs. The DNN is the one the driver would fit itself."""
    import torch

    from ddray.aggregation import aggregate, stack_probabilities
    from ddray.data import load_dataset
    from ddray.run_dir import RunDir
    from ddray.training.baselines import parameter_summary

    config = count_config(training={"epochs": 2})
    out = tmp_path / "run"
    code = (
        "import json, sys, ddray\n"
        f"results = ddray.run(json.loads({json.dumps(json.dumps(config.model_dump(mode='json')))}), {str(out)!r}, "
        f"address={ray_cluster.get_runtime_context().gcs_address!r})\n"
        "print(json.dumps(sorted(m for m in ('torch', 'torch._dynamo', 'sympy') if m in sys.modules)))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == ["torch"]

    saved = json.loads((out / "results.json").read_text())
    run_dir = RunDir.existing(out)
    dataset = load_dataset(config.dataset, seed=config.seed, grid=config.decomposition.grid, overlap=config.decomposition.overlap)
    local = [run_dir.load_local_result(i)[0] for i in range(4)]
    probs = {split: stack_probabilities([p[split] for p in local]) for split in ("train", "val", "test")}
    labels = {"train": dataset.y_train, "val": dataset.y_val, "test": dataset.y_test}
    state, spec = run_dir.load_dnn()
    aggregation, here = aggregate(["dnn", "average", "vote"], probs, labels, spec)
    assert here.test_accuracy == saved["aggregation"]["dnn"]["test_accuracy"]
    assert all(torch.equal(here.model.state_dict()[k], state[k]) for k in state)
    assert aggregation["vote"] == saved["aggregation"]["vote"]
    assert saved["parameters"] == parameter_summary(config, num_classes=dataset.num_classes, in_channels=dataset.in_channels,
                                                    local_parameters=[e["parameters"] for e in saved["local"]])


@pytest.mark.ray
def test_a_family_registered_in_the_driver_trains_on_the_ray_workers(ray_cluster, tmp_path):
    """``register_model`` registers in the calling process only; the spec carries the family to the
    workers that build the local CNNs (here a function defined in this test: pickled by value)."""
    import torch

    from ddray.models import register_model

    @register_model("pipeline_test_tiny", spatial_dims=(2,))
    def tiny(*, in_channels, num_classes, spatial_dims, width=1.0):
        hidden = max(2, int(8 * width))
        return torch.nn.Sequential(torch.nn.Conv2d(in_channels, hidden, 3, padding=1), torch.nn.ReLU(),
                                   torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(hidden, num_classes))

    config = count_config(local_model={"name": "pipeline_test_tiny", "width": 0.5}, training={"epochs": 2})
    results = run(config, tmp_path / "run")
    assert [e["subdomain"] for e in results["local"]] == [0, 1, 2, 3]
    assert all(e["parameters"] == sum(p.numel() for p in tiny(in_channels=1, num_classes=5, spatial_dims=2, width=0.5).parameters())
               for e in results["local"])
    assert results["parameters"]["local_width"] == 0.5


@pytest.mark.ray
def test_dnn_beats_average_and_vote_when_label_needs_all_subdomains(ray_cluster, tmp_path):
    """Label = number of marked cells: each subdomain only knows its own cell.

    Also runs the subdomains on fractional (logical) GPUs: 0.5 GPU each on the
    test cluster's one fake GPU, falling back to CPU in torch.
    """
    config = count_config(resources={"cpus_per_subdomain": 1, "gpus_per_subdomain": 0.5})
    results = run(config, tmp_path / "count")
    agg = results["aggregation"]
    assert agg["dnn"]["test_accuracy"] >= 0.85
    assert agg["dnn"]["test_accuracy"] >= agg["average"]["test_accuracy"] + 0.2
    assert agg["dnn"]["test_accuracy"] >= agg["vote"]["test_accuracy"] + 0.2


@pytest.mark.ray
def test_3d_volumes(ray_cluster, tmp_path):
    config = parse_config(
        {
            "dataset": {"source": "synthetic", "kind": "count", "samples": 240, "size": [8, 12, 12]},
            "decomposition": {"grid": [2, 1, 1], "overlap": 2},
            "local_model": {"name": "small_cnn", "width": 0.25},
            "training": {"epochs": 5, "batch_size": 32, "lr": 0.01},
            "aggregation": {"dnn": {"hidden": [16], "epochs": 40, "lr": 0.01}},
        }
    )
    results = run(config, tmp_path / "vol")
    assert results["decomposition"]["subdomains"] == 2
    assert len(results["local"]) == 2
    bounds = [tuple(map(tuple, e["bounds"])) for e in results["local"]]
    assert bounds == [((0, 5), (0, 12), (0, 12)), ((3, 8), (0, 12), (0, 12))]
    assert results["aggregation"]["dnn"]["test_accuracy"] >= 0.7
    preds = TrainedRun(tmp_path / "vol").predict_array(np.zeros((3, 1, 8, 12, 12), dtype=np.float32))
    assert len(preds.decisions["dnn"]) == 3


@pytest.mark.ray
def test_unsatisfiable_gpu_request_fails_at_once(ray_cluster, tmp_path):
    config = count_config(resources={"gpus_per_subdomain": 2})
    with pytest.raises(ResourceError, match="gpus_per_subdomain=2"):
        run(config, tmp_path / "gpu")
    assert not list((tmp_path / "gpu").glob("local/*.npz"))  # refused before any subdomain trained
    progress = json.loads((tmp_path / "gpu" / "progress.json").read_text())
    assert progress["phase"] == "failed" and "gpus_per_subdomain" in progress["error"]


def _kill_a_worker_mid_training(out: Path, min_epoch: int = 3) -> int:
    """SIGKILL the process training some subdomain once it passed ``min_epoch``; return that subdomain."""
    deadline = time.time() + 120
    while time.time() < deadline:
        time.sleep(0.2)
        try:
            subs = json.loads((out / "progress.json").read_text())["subdomains"]
        except (FileNotFoundError, json.JSONDecodeError, KeyError):
            continue
        for key, entry in subs.items():
            # well before its last epoch, so the worker cannot have moved on to another subdomain
            if entry.get("status") == "running" and min_epoch <= entry.get("epoch", 0) <= entry.get("epochs", 0) // 2 and entry.get("pid"):
                os.kill(entry["pid"], signal.SIGKILL)
                return int(key)
    raise AssertionError(f"no subdomain reached epoch {min_epoch}")


def _run_in_thread(config, out):
    outcome: dict = {}

    def target():
        try:
            outcome["results"] = run(config, out)
        except Exception as err:  # noqa: BLE001 - handed to the test
            outcome["error"] = err

    thread = threading.Thread(target=target)
    thread.start()
    return thread, outcome


@pytest.mark.ray
def test_killed_worker_is_restarted_from_its_checkpoint(ray_cluster, tmp_path):
    """SIGKILL a subdomain's worker mid-training: a new worker resumes from the last epoch."""
    config = count_config(training={"epochs": 40}, resources={"max_retries": 2}, aggregation={"methods": ["average"]})
    out = tmp_path / "fault"
    thread, outcome = _run_in_thread(config, out)
    victim = _kill_a_worker_mid_training(out)
    thread.join(timeout=300)
    results = outcome["results"]
    assert len(results["local"]) == 4
    resumed = results["local"][victim]
    assert resumed["resumed_from_epoch"] >= 3
    assert resumed["epochs_run"] == 40


@pytest.mark.ray
def test_retries_exhausted_names_the_subdomain_and_keeps_checkpoints(ray_cluster, tmp_path):
    config = count_config(training={"epochs": 40}, resources={"max_retries": 0}, aggregation={"methods": ["average"]})
    out = tmp_path / "fatal"
    thread, outcome = _run_in_thread(config, out)
    victim = _kill_a_worker_mid_training(out, min_epoch=2)
    thread.join(timeout=300)
    err = outcome.get("error")
    assert err is not None and type(err).__name__ == "SubdomainFailed"
    assert f"subdomain {victim} failed" in str(err) and "max_retries=0" in str(err) and "--resume" in str(err)
    assert (out / "state" / f"sub{victim:03d}.ckpt").exists()  # its epochs are not lost
    progress = json.loads((out / "progress.json").read_text())
    assert progress["phase"] == "failed" and f"subdomain {victim}" in progress["error"]


@pytest.mark.ray
def test_storage_and_dataset_as_uris(ray_cluster, tmp_path):
    """storage: and dataset.path may be URIs (file:// here; s3:// and gs:// go through the same pyarrow code)."""
    from ddray.data import generate_count

    x, y = generate_count([16, 16], [2, 2], samples=200, channels=1, seed=1)
    np.savez(tmp_path / "data.npz", x=x, y=y)
    config = count_config(
        dataset={"source": "npz", "path": (tmp_path / "data.npz").as_uri()},
        training={"epochs": 2},
        aggregation={"methods": ["average"]},
        storage=(tmp_path / "shared").as_uri(),
    )
    results = run(config, tmp_path / "uri-run")
    assert len(results["local"]) == 4
    info = json.loads((tmp_path / "uri-run" / "run.json").read_text())
    assert info["storage"] == f"{(tmp_path / 'shared').as_uri()}/{info['run_id']}"  # the run's own prefix
    prefix = tmp_path / "shared" / info["run_id"]
    assert sorted(p.name for p in (prefix / "state").iterdir()) == [f"sub{i:03d}.ckpt" for i in range(4)]
    assert (prefix / "results.json").read_bytes() == (tmp_path / "uri-run" / "results.json").read_bytes()  # folder copied


def _cli(*args, cwd):
    env = {**os.environ, "DDRAY_PLAIN_PROGRESS": "1"}
    return subprocess.run([sys.executable, "-m", "ddray", *args], capture_output=True, text=True, timeout=120, cwd=cwd, env=env)


def test_cli_bad_config_names_the_field(tmp_path):
    (tmp_path / "bad.yaml").write_text("training: {optimizer: adagrad}\ndecomposition: {grid: [2, 2]}\n")
    proc = _cli("run", "bad.yaml", "--output", "out", cwd=tmp_path)
    assert proc.returncode == 2
    assert "training.optimizer" in proc.stderr and "'adam'" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_cli_bad_data_file_names_the_file_before_any_worker(tmp_path):
    x = np.random.default_rng(0).normal(size=(50, 1, 16, 16)).astype(np.float32)
    x[3, 0, 2, 2] = np.nan
    np.savez(tmp_path / "data.npz", x=x, y=np.arange(50) % 2)
    (tmp_path / "cfg.yaml").write_text("dataset: {source: npz, path: data.npz}\n")
    proc = _cli("run", "cfg.yaml", "--output", "out", cwd=tmp_path)
    assert proc.returncode == 2
    assert "data.npz" in proc.stderr and "NaN" in proc.stderr
    assert not (tmp_path / "out").exists()  # refused before a run folder was made (Ray starts meanwhile, and stops)


@pytest.mark.ray
def test_sigterm_stops_a_cli_run_cleanly_keeping_its_work(tmp_path):
    """`ddray cancel` and schedulers send SIGTERM: the run ends "cancelled" and keeps its work for --resume."""
    (tmp_path / "cfg.yaml").write_text(
        "dataset: {source: synthetic, kind: count, samples: 240, size: [16, 16]}\n"
        "decomposition: {grid: [2, 1]}\n"
        "local_model: {name: small_cnn, width: 0.25}\n"
        "training: {epochs: 40, batch_size: 32}\n"
        "aggregation: {methods: [average]}\n"
    )
    env = {**os.environ, "DDRAY_PLAIN_PROGRESS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "ddray", "run", "cfg.yaml", "--output", "out", "--num-cpus", "2"], cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline:
        time.sleep(0.3)
        try:
            subs = json.loads((tmp_path / "out" / "progress.json").read_text())["subdomains"]
        except (FileNotFoundError, json.JSONDecodeError, KeyError):
            continue
        if any(entry.get("epoch", 0) >= 2 for entry in subs.values()):
            break
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err[-2000:]
    progress = json.loads((tmp_path / "out" / "progress.json").read_text())
    assert progress["phase"] == "cancelled" and "--resume" in progress["error"]
    assert any((tmp_path / "out" / "state").iterdir())  # epochs trained so far are kept
