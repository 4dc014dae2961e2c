"""Run identity and storage per run: every run owns ``<storage>/<run_id>/``, never shares or adopts it,
and leaves its whole folder there; data and storage in a real S3-compatible bucket (moto)."""

from __future__ import annotations

import json
import os
import re
import signal
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from ddray import storage
from ddray.config import parse_config
from ddray.data import generate_count
from ddray.run_dir import RunDir, RunDirError, check_run_id, new_run_id
from raycluster import processes_left

BUCKET = "ddray-run-tests"
ROOT = Path(__file__).resolve().parents[1]


def run_config(**overrides) -> dict:
    cfg = {
        "dataset": {"source": "npz", "path": f"s3://{BUCKET}/data/x.npz"},
        "decomposition": {"grid": [1, 2], "overlap": 0},
        "local_model": {"name": "small_cnn", "width": 0.25},
        "training": {"epochs": 3, "batch_size": 32, "lr": 0.01},
        "aggregation": {"methods": ["dnn", "average"], "dnn": {"hidden": [8], "epochs": 5}},
        "resources": {"cpus_per_subdomain": 1, "gpus_per_subdomain": 0, "max_retries": 1},
        "storage": f"s3://{BUCKET}/runs",
    }
    for key, value in overrides.items():
        cfg[key] = {**cfg.get(key, {}), **value} if isinstance(value, dict) else value
    return {k: v for k, v in cfg.items() if v is not None}


def cli(*args, cwd, env, timeout=300):
    return subprocess.run([sys.executable, "-m", "ddray", *args], capture_output=True, text=True, timeout=timeout, cwd=cwd, env=env)


def child_env(server, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "DDRAY_STORAGE"}
    return {**env, **server.env, "DDRAY_PLAIN_PROGRESS": "1", "PYTHONPATH": str(ROOT), **extra}


def run_info(out: Path) -> dict:
    return json.loads((out / "run.json").read_text())


# ------------------------------------------------------------------ run ids and ownership (no Ray)


def test_run_ids_default_and_validation():
    rid = new_run_id("run")
    assert re.fullmatch(r"run-\d{8}T\d{6}-[0-9a-f]{6}", rid)
    assert new_run_id("run") != rid  # random part: two runs started in the same second differ
    assert check_run_id(new_run_id("my data (v2) ü" * 8)) and len(new_run_id("x" * 100)) <= 64
    for bad in ["", "a/b", "x" * 65, "..", ".", "white space", "ü"]:
        with pytest.raises(RunDirError, match="invalid run id"):
            check_run_id(bad)


def test_fresh_runs_claim_an_empty_prefix_and_resume_only_their_own(tmp_path):
    base = str(tmp_path / "store")
    config = parse_config(run_config(dataset={"source": "synthetic", "path": None}, storage=base))
    first = RunDir.fresh(tmp_path / "a" / "run", base, "job-1")
    assert first.storage == f"{base}/job-1" and first.location("tune") == f"{base}/job-1/tune"
    first.claim(config)
    assert run_info(first.root) == {"run_id": "job-1", "storage": f"{base}/job-1"}
    assert storage.list_files(first.storage) == ["config.yaml", "run.json"]  # claimed at once

    with pytest.raises(RunDirError) as err:  # same run id, other folder: the prefix is taken
        RunDir.fresh(tmp_path / "b" / "run", base, "job-1")
    assert f"{base}/job-1" in str(err.value) and "--run-id" in str(err.value) and "--resume" in str(err.value)
    assert not (tmp_path / "b").exists()
    with pytest.raises(RunDirError, match="already holds a ddray run"):
        RunDir.fresh(first.root, base)

    assert RunDir.existing(first.root) == first
    with pytest.raises(RunDirError, match="job-1"):
        RunDir.existing(first.root, "job-2")
    storage.write_bytes(f"{first.storage}/run.json", json.dumps({"run_id": "someone-else"}).encode())
    with pytest.raises(RunDirError, match="someone-else"):
        RunDir.existing(first.root)
    os.remove(f"{first.storage}/run.json")
    with pytest.raises(RunDirError, match="missing"):
        RunDir.existing(first.root)

    (tmp_path / "old").mkdir()  # a run folder of an older ddray: no run.json
    (tmp_path / "old" / "config.yaml").write_text("{}")
    with pytest.raises(RunDirError, match="no run.json"):
        RunDir.existing(tmp_path / "old")


def test_without_storage_everything_stays_in_the_run_folder(tmp_path, monkeypatch):
    monkeypatch.delenv("DDRAY_STORAGE", raising=False)
    run_dir = RunDir.fresh(tmp_path / "run", storage.storage_base(None))
    assert run_dir.storage is None and run_dir.state == str(tmp_path / "run" / "state")
    assert run_dir.location("tune") == str(tmp_path / "run" / "tune")


def test_ray_train_and_tune_storage_is_the_run_prefix_not_a_private_resolution(tmp_path, monkeypatch):
    """Once a run has its prefix, neither DDRAY_STORAGE nor the config moves its Tune or Train experiments."""
    monkeypatch.setenv("DDRAY_STORAGE", "s3://from-env/runs")
    run_dir = RunDir(tmp_path / "run", storage="s3://the-run/prefix/r1", run_id="r1")
    assert run_dir.location("baselines") == "s3://the-run/prefix/r1/baselines"
    assert run_dir.location("tune") == "s3://the-run/prefix/r1/tune"
    assert RunDir(tmp_path / "run").location("tune") == str(tmp_path / "run" / "tune")
    monkeypatch.setenv("DDRAY_STORAGE", str(tmp_path / "env-store"))
    fresh = RunDir.fresh(tmp_path / "other", storage.storage_base(None), "r2")  # env used when the config has none
    assert fresh.storage == str(tmp_path / "env-store" / "r2") and fresh.location("baselines") == f"{fresh.storage}/baselines"


@pytest.mark.cluster
def test_unreachable_bucket_is_refused_before_anything_is_written(s3, tmp_path):
    config = parse_config(run_config(dataset={"source": "synthetic", "path": None}, storage="s3://no-such-bucket-ddray/runs"))
    with s3.environ():
        run_dir = RunDir.fresh(tmp_path / "run", config.storage, "r1")
        with pytest.raises(RunDirError, match="s3://no-such-bucket-ddray/runs/r1"):
            run_dir.claim(config)
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------ whole runs through the CLI, bucket storage


@pytest.fixture(scope="module")
def bucket(s3, tmp_path_factory):
    """The moto bucket with the data set s3://BUCKET/data/x.npz."""
    s3.create_bucket(BUCKET)
    x, y = generate_count([16, 16], [1, 2], samples=240, channels=1, seed=1)
    path = tmp_path_factory.mktemp("data") / "x.npz"
    np.savez(path, x=x, y=y)
    s3.client().upload_file(str(path), BUCKET, "data/x.npz")
    return s3


@pytest.fixture(scope="module")
def first_run(bucket, tmp_path_factory):
    """One CLI run: storage s3://BUCKET/runs, data s3://BUCKET/data/x.npz, output folder named 'run' (as REST jobs)."""
    work = tmp_path_factory.mktemp("first")
    (work / "cfg.yaml").write_text(yaml.safe_dump(run_config()))
    ray_tmp = tempfile.mkdtemp(prefix="ddr-", dir="/tmp")  # the embedded Ray's sessions (short: socket paths are limited)
    proc = cli("run", "cfg.yaml", "--output", "job1/run", "--num-cpus", "2", cwd=work, env=child_env(bucket, RAY_TMPDIR=ray_tmp))
    assert proc.returncode == 0, proc.stderr[-3000:]
    # the embedded Ray ended with the run: none of its processes (GCS, raylet, monitors, agents, workers) is left
    assert processes_left(ray_tmp) == []
    shutil.rmtree(ray_tmp, ignore_errors=True)
    out = work / "job1" / "run"
    return {"work": work, "out": out, "info": run_info(out), "keys": bucket.keys(BUCKET, "runs/"), "stderr": proc.stderr}


@pytest.mark.cluster
def test_cli_run_leaves_its_whole_folder_under_its_own_prefix(first_run, bucket):
    out, info = first_run["out"], first_run["info"]
    run_id = info["run_id"]
    assert re.fullmatch(r"run-\d{8}T\d{6}-[0-9a-f]{6}", run_id)
    assert info["storage"] == f"s3://{BUCKET}/runs/{run_id}"
    stored = bucket.keys(BUCKET, f"runs/{run_id}/")
    local = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert {f"runs/{run_id}/{rel}" for rel in local} <= set(stored)  # every file of the run folder
    for rel in ["results.json", "results.md", "results.csv", "accuracy.png", "config.yaml", "run.json", "progress.json",
                "subdomains.json", "preprocessing.json", "timings.json", "checkpoints/local/sub000.pt",
                "checkpoints/local/sub001.pt", "checkpoints/dnn.pt", "local/sub000.npz", "state/sub000.ckpt", "state/sub001.ckpt"]:
        assert f"runs/{run_id}/{rel}" in stored, rel
    assert not (out / "state").exists()  # per-epoch state went to the bucket directly
    with bucket.environ():
        remote = json.loads(storage.read_bytes(f"s3://{BUCKET}/runs/{run_id}/results.json"))
        assert storage.read_bytes(f"s3://{BUCKET}/runs/{run_id}/checkpoints/dnn.pt") == (out / "checkpoints" / "dnn.pt").read_bytes()
    assert remote == json.loads((out / "results.json").read_text())
    assert json.loads(storage.read_bytes(str(out / "progress.json")))["phase"] == "done"
    assert all(entry["resumed_from_epoch"] == 0 for entry in remote["local"])


@pytest.mark.cluster
def test_a_second_identical_run_gets_its_own_prefix_and_trains_from_scratch(first_run, bucket):
    """The REST case: same storage, same output folder name 'run'; the second job must not resume the first."""
    work = first_run["work"]
    proc = cli("run", "cfg.yaml", "--output", "job2/run", "--num-cpus", "2", cwd=work, env=child_env(bucket))
    assert proc.returncode == 0, proc.stderr[-3000:]
    second = run_info(work / "job2" / "run")
    assert second["run_id"] != first_run["info"]["run_id"]
    assert second["storage"] == f"s3://{BUCKET}/runs/{second['run_id']}"
    results = json.loads((work / "job2" / "run" / "results.json").read_text())
    assert [entry["resumed_from_epoch"] for entry in results["local"]] == [0, 0]
    assert [entry["epochs_run"] for entry in results["local"]] == [3, 3]
    stored = bucket.keys(BUCKET, f"runs/{second['run_id']}/")
    assert f"runs/{second['run_id']}/results.json" in stored and f"runs/{second['run_id']}/checkpoints/local/sub000.pt" in stored
    # the first run's prefix is untouched
    first_id = first_run["info"]["run_id"]
    assert bucket.keys(BUCKET, f"runs/{first_id}/") == [k for k in first_run["keys"] if k.startswith(f"runs/{first_id}/")]


@pytest.mark.cluster
def test_a_fresh_run_on_an_occupied_prefix_is_refused_and_writes_nothing(first_run, bucket):
    run_id = first_run["info"]["run_id"]
    before = bucket.keys(BUCKET, f"runs/{run_id}/")
    work = first_run["work"]
    proc = cli("run", "cfg.yaml", "--output", "job3/run", "--run-id", run_id, cwd=work, env=child_env(bucket))
    assert proc.returncode == 2, proc.stderr[-2000:]
    message = " ".join(proc.stderr.split())
    assert f"s3://{BUCKET}/runs/{run_id}" in message and "--run-id" in message and "--resume" in message
    assert not (work / "job3").exists()
    assert bucket.keys(BUCKET, f"runs/{run_id}/") == before

    proc = cli("run", "cfg.yaml", "--output", "job4/run", "--run-id", "no/slashes", cwd=work, env=child_env(bucket))
    assert proc.returncode == 2 and "invalid run id" in proc.stderr
    assert not (work / "job4").exists()


@pytest.mark.cluster
def test_resume_of_an_interrupted_run_reuses_its_prefix(bucket, tmp_path):
    """DDRAY_STORAGE picks the base at creation; --resume keeps the recorded prefix even if the variable changes."""
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(run_config(training={"epochs": 40}, aggregation={"methods": ["average"]}, storage=None)))
    env = child_env(bucket, DDRAY_STORAGE=f"s3://{BUCKET}/env-runs")
    proc = subprocess.Popen(
        [sys.executable, "-m", "ddray", "run", "cfg.yaml", "--output", "run", "--run-id", "interrupted-1", "--num-cpus", "2"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    deadline = time.time() + 180
    while time.time() < deadline and proc.poll() is None:
        time.sleep(0.3)
        try:
            subs = json.loads((tmp_path / "run" / "progress.json").read_text())["subdomains"]
        except (FileNotFoundError, json.JSONDecodeError, KeyError):
            continue
        if any(entry.get("epoch", 0) >= 2 for entry in subs.values()):
            break
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-3000:]
    prefix = "runs/interrupted-1/"
    stored = bucket.keys(BUCKET, f"env-{prefix}")
    assert f"env-{prefix}run.json" in stored and f"env-{prefix}progress.json" in stored  # kept although cancelled
    assert any(k.startswith(f"env-{prefix}state/") for k in stored)
    with bucket.environ():
        assert json.loads(storage.read_bytes(f"s3://{BUCKET}/env-{prefix}progress.json"))["phase"] == "cancelled"

    env["DDRAY_STORAGE"] = f"s3://{BUCKET}/elsewhere"  # must not matter: the prefix is the run's own
    proc2 = cli("run", "--resume", "run", "--num-cpus", "2", cwd=tmp_path, env=env)
    assert proc2.returncode == 0, proc2.stderr[-3000:]
    assert run_info(tmp_path / "run") == {"run_id": "interrupted-1", "storage": f"s3://{BUCKET}/env-runs/interrupted-1"}
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert max(entry["resumed_from_epoch"] for entry in results["local"]) >= 1  # from state in the bucket
    assert all(entry["epochs_run"] == 40 for entry in results["local"])
    assert f"env-{prefix}results.json" in bucket.keys(BUCKET, f"env-{prefix}")
    assert bucket.keys(BUCKET, "elsewhere/") == []


# ------------------------------------------------------------------ Tune under DDRAY_STORAGE (shared in-process Ray)


@pytest.mark.ray
def test_tune_experiment_lands_under_the_run_prefix(ray_cluster, tmp_path, monkeypatch):
    from ddray.orchestration.driver import run

    monkeypatch.setenv("DDRAY_STORAGE", str(tmp_path / "store"))
    config = parse_config(
        {
            "dataset": {"source": "synthetic", "kind": "count", "samples": 160, "size": [8, 8]},
            "decomposition": {"grid": [1, 2]},
            "local_model": {"name": "small_cnn", "width": 0.25},
            "training": {"epochs": 1, "batch_size": 32},
            "aggregation": {"methods": ["average"]},
            "tune": {"num_samples": 1, "search_alg": "random", "scheduler": "none", "max_concurrent_trials": 2,
                     "space": {"lr": {"loguniform": [0.001, 0.01]}}},
        }
    )
    results = run(config, tmp_path / "run", run_id="tuned-1")
    prefix = tmp_path / "store" / "tuned-1"
    assert run_info(tmp_path / "run") == {"run_id": "tuned-1", "storage": str(prefix)}
    assert results["tune"]["experiment_path"] == f"{prefix}/tune/search"
    assert list((prefix / "tune" / "search").glob("experiment_state-*.json"))  # Tune's own experiment files
    assert not (tmp_path / "run" / "tune" / "search").exists()  # nothing of it in the run folder
    stored = storage.list_files(str(prefix))
    for rel in ["results.json", "run.json", "tune/best_configs.json", "tune/sub000_trials.csv", "checkpoints/local/sub001.pt"]:
        assert rel in stored, rel
