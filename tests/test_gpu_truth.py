"""Where each subdomain really trained: the device in results.json, the CPU fallback said out loud, require_cuda.

This machine has no CUDA device; Ray's logical GPUs (the shared ``ray_cluster``
has one) schedule GPU workers that must then train on CPU and say so.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from ddray.config import ConfigError, parse_config
from ddray.decomposition import decompose
from ddray.errors import JobFailed
from ddray.training.local import CudaUnavailable, cpu_threads, train_subdomain, training_device
from ddray.training.spec import DeviceRequest, ModelSpec, OptimizerSpec, TrainingSpec, training_spec

no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU fallback; this machine has CUDA")


def gpu_settings(gpus: float = 0.5, require_cuda: bool = False) -> TrainingSpec:
    return TrainingSpec(
        ModelSpec("small_cnn", 0.25, in_channels=1, num_classes=2), OptimizerSpec("adam", 0.01), epochs=1, batch_size=16,
        device=DeviceRequest(gpus, require_cuda),
    )


def test_cpu_threads_follow_the_cpu_share():
    assert [cpu_threads(c) for c in (0.25, 0.5, 1, 1.5, 2, 2.5, 3)] == [1, 1, 1, 1, 2, 2, 3]


def test_cpu_request_trains_on_cpu_silently(capsys):
    assert training_device(gpu_settings(gpus=0.0), 0) == torch.device("cpu")
    assert capsys.readouterr().err == ""


@no_cuda
def test_gpu_request_without_cuda_falls_back_to_cpu_with_a_warning(capsys, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    torch.set_num_threads(2)
    device = training_device(gpu_settings(), 3)
    assert device == torch.device("cpu")
    err = capsys.readouterr().err
    assert "subdomain 3: asked for 0.5 GPU but torch.cuda.is_available() is False" in err
    assert "CUDA_VISIBLE_DEVICES=0" in err and f"torch {torch.__version__}" in err
    assert "training on CPU with 2 threads" in err


@no_cuda
def test_require_cuda_fails_naming_the_fix():
    with pytest.raises(CudaUnavailable) as err:
        training_device(gpu_settings(require_cuda=True), 1)
    text = str(err.value)
    assert "subdomain 1: asked for 0.5 GPU" in text and "torch.cuda.is_available() is False" in text
    assert "require_cuda: false" in text and "driver" in text


@no_cuda
def test_result_records_the_device(capsys):
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", 32), ("val", 8), ("test", 8)):
        arrays[f"x_{split}"] = rng.normal(size=(n, 1, 8, 8)).astype(np.float32)
        arrays[f"y_{split}"] = rng.integers(0, 2, size=n)
    sub = decompose((8, 8), [1, 2], 0)[1]
    result = train_subdomain(sub, arrays, gpu_settings())
    assert result.device == "cpu" and result.summary()["device"] == "cpu"
    assert "subdomain 1: asked for 0.5 GPU" in capsys.readouterr().err
    plain = train_subdomain(sub, arrays, gpu_settings(gpus=0.0))
    assert plain.summary()["device"] == "cpu"
    with pytest.raises(CudaUnavailable):  # before any training: nothing to time, no state written
        train_subdomain(sub, arrays, gpu_settings(require_cuda=True))


def test_require_cuda_is_validated_with_the_gpu_request():
    base = {"dataset": {"source": "digits"}, "decomposition": {"grid": [2, 2]}}
    assert parse_config(base).resources.require_cuda is False
    ok = parse_config({**base, "resources": {"gpus_per_subdomain": 0.5, "require_cuda": True}})
    assert ok.resources.require_cuda is True
    with pytest.raises(ConfigError, match="require_cuda"):
        parse_config({**base, "resources": {"require_cuda": True}})
    spec = training_spec(ok, num_classes=10, in_channels=1)
    assert spec.device == DeviceRequest(0.5, True) and spec.device.use_gpu


# ------------------------------------------------------------------ on Ray (one logical GPU, no CUDA)


def gpu_job(**resources):
    return parse_config(
        {
            "dataset": {"source": "synthetic", "kind": "count", "samples": 240, "size": [16, 16]},
            "decomposition": {"grid": [2, 2], "overlap": 0},
            "local_model": {"name": "small_cnn", "width": 0.25},
            "training": {"epochs": 2, "batch_size": 32, "lr": 0.01},
            "aggregation": {"methods": ["dnn", "average"], "dnn": {"hidden": [16], "epochs": 10, "lr": 0.01}},
            "resources": {"cpus_per_subdomain": 1, "gpus_per_subdomain": 0.5, **resources},
        }
    )


def _worker_logs_since(started: float) -> str:
    import ray

    logs = Path(ray._private.worker._global_node.get_logs_dir_path())
    return "".join(p.read_text(errors="replace") for p in logs.glob("worker-*.err") if p.stat().st_mtime >= started)


@no_cuda
@pytest.mark.ray
def test_fractional_gpu_job_records_cpu_device_and_warns(ray_cluster, tmp_path):
    from ddray.orchestration.driver import run

    started = time.time() - 1
    run(gpu_job(), tmp_path / "gpu")
    saved = json.loads((tmp_path / "gpu" / "results.json").read_text())
    assert [e["device"] for e in saved["local"]] == ["cpu"] * 4
    # the actors' stderr (what log_to_driver forwards to the job log) names the fallback per subdomain
    logs = _worker_logs_since(started)
    for i in range(4):
        assert f"subdomain {i}: asked for 0.5 GPU but torch.cuda.is_available() is False" in logs


@no_cuda
@pytest.mark.ray
def test_require_cuda_fails_before_training(ray_cluster, tmp_path):
    from ddray.orchestration.driver import run

    out = tmp_path / "cuda"
    with pytest.raises(JobFailed) as err:
        run(gpu_job(require_cuda=True), out)
    text = str(err.value)
    assert "require_cuda" in text and "torch.cuda.is_available() is False" in text and "driver" in text
    progress = json.loads((out / "progress.json").read_text())
    assert progress["phase"] == "failed" and "require_cuda" in progress["error"]
    assert all(entry.get("epoch", 0) == 0 for entry in progress["subdomains"].values())  # no epoch trained
    assert not list(out.rglob("*.ckpt")) and not (out / "results.json").exists()
