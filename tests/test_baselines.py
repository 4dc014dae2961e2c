"""Comparison models: global CNN (DDP on Ray Train), coherent CNN-DNN, transfer learning; the report."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from ddray.config import parse_config
from ddray.decomposition import decompose
from ddray.models import DNNAggregator
from ddray.run_dir import RunDir
from ddray.training.baselines import BaselineJob, TransferStart, build_model, parameter_checksum, shard_indices, train_baseline
from ddray.training.spec import DNNSpec, ModelSpec, OptimizerSpec, TrainingSpec

LOCAL = TrainingSpec(ModelSpec("small_cnn", 0.25, in_channels=1, num_classes=3), OptimizerSpec("adam", 0.01), epochs=1, batch_size=8)


def _settings(name, *, hidden=(64,), lr=0.01, epochs=1, subdomains=2):
    training = TrainingSpec(ModelSpec("small_cnn", 1.0, in_channels=1, num_classes=3), OptimizerSpec("adam", lr), epochs=epochs, batch_size=8)
    return BaselineJob(name, training, DNNSpec(subdomains, 3, hidden=hidden))


def _arrays(n=40, size=8, k=3, seed=0):
    rng = np.random.default_rng(seed)
    out = {}
    for split in ("train", "val", "test"):
        out[f"x_{split}"] = rng.random((n, 1, size, size), dtype=np.float32)
        out[f"y_{split}"] = rng.integers(0, k, n)
    return out


def test_shards_are_equal_disjoint_and_cover_all_but_the_remainder():
    shards = [shard_indices(103, r, 4, seed=1) for r in range(4)]
    assert {len(s) for s in shards} == {25}
    joined = torch.cat(shards)
    assert len(set(joined.tolist())) == 100
    with pytest.raises(ValueError, match="cannot be split"):
        shard_indices(3, 0, 2, seed=0)


def test_transfer_model_starts_from_the_trained_local_models_and_dnn():
    subs = decompose((8, 8), [1, 2])
    local = LOCAL
    trained = []
    for i in range(2):
        torch.manual_seed(100 + i)
        trained.append(local.model.build())
    dnn = DNNAggregator(2, 3, hidden=[16])
    start = TransferStart([local, local], [m.state_dict() for m in trained], dnn.state_dict())
    settings = _settings("transfer", hidden=(16,))
    model = build_model(settings, subs, [local, local], start)
    assert [parameter_checksum(m) for m in model.local_models] == [parameter_checksum(m) for m in trained]
    assert parameter_checksum(model.dnn) == parameter_checksum(dnn)
    coherent = build_model(_settings("coherent", hidden=(16,)), subs, [local, local])
    assert parameter_checksum(coherent.local_models[0]) != parameter_checksum(trained[0])

    # the start competes in model selection: with nothing learnt (lr 0) the start is kept as "epoch 0"
    frozen = _settings("transfer", hidden=(16,), lr=1e-12, epochs=2)
    outcome = train_baseline(build_model(frozen, subs, [local, local], start), _arrays(), frozen)
    assert outcome.best_epoch == 0
    assert outcome.initial_local_checksums == [parameter_checksum(m) for m in trained]
    assert outcome.validation_accuracy == outcome.start_validation_accuracy


def test_global_model_is_the_full_width_family_member():
    g = build_model(_settings("global"))
    local = LOCAL.model.build()
    assert sum(p.numel() for p in g.parameters()) > 4 * sum(p.numel() for p in local.parameters())
    before = parameter_checksum(g)
    arrays = _arrays(size=16)
    outcome = train_baseline(g, arrays, _settings("global", epochs=2))
    assert outcome.initial_checksum == before and parameter_checksum(g) != before  # it trained
    assert outcome.initial_local_checksums == [] and len(outcome.history) == 2
    # the reported test accuracy is the selected model's on the test split
    preds = g.eval()(torch.from_numpy(arrays["x_test"])).argmax(1).numpy()
    assert outcome.test_accuracy == pytest.approx(float((preds == arrays["y_test"]).mean()))


def test_finished_baselines_are_not_trained_again(tmp_path):
    """--resume: a baseline with its summary on disk is returned as is, without a Ray Train job."""
    from ddray.orchestration.train_jobs import run_baselines
    from ddray.run_dir import RunDir

    config = parse_config({"compare": ["global"]})
    run_dir = RunDir(tmp_path)
    (tmp_path / "baselines").mkdir()
    saved = {"test_accuracy": 0.5, "train_wall_s": 1.0, "parameters": 10, "history": [{"epoch": 1}]}
    (tmp_path / "baselines" / "global.json").write_text(json.dumps(saved))
    out = run_baselines(config, run_dir, dataset=None, subdomains=[])
    assert out == {"global": {"test_accuracy": 0.5, "train_wall_s": 1.0, "parameters": 10}}


# ------------------------------------------------------------------ real Ray Train jobs


@pytest.fixture(scope="module")
def compared_run(ray_cluster, tmp_path_factory):
    from ddray.orchestration.driver import run

    out = tmp_path_factory.mktemp("compare") / "run"
    config = parse_config(
        {
            # the label is the NUMBER of marked cells: only the subdomains jointly can tell it
            "dataset": {"source": "synthetic", "kind": "count", "samples": 400, "size": [16, 16]},
            "decomposition": {"grid": [2, 2]},
            "local_model": {"name": "small_cnn", "width": 0.25},
            "training": {"epochs": 3, "batch_size": 32, "lr": 0.003},
            "baselines": {"epochs": 4},
            "resources": {"num_workers": 2},
            "compare": ["global", "coherent", "transfer"],
            "seed": 1,
        }
    )
    return run(config, out), out


@pytest.mark.ray
def test_global_baseline_runs_data_parallel_on_two_workers(compared_run):
    results, out = compared_run
    g = results["baselines"]["global"]
    assert g["world_size"] == 2 and g["num_workers"] == 2 and g["use_gpu"] is False
    for name in ("global", "coherent", "transfer"):
        info = results["baselines"][name]
        assert {"test_accuracy", "train_wall_s", "parameters", "job_wall_s", "startup_s"} <= set(info)
        assert 0 < info["train_wall_s"] < info["job_wall_s"]
        assert (out / "checkpoints" / "baselines" / f"{name}.pt").exists()
        assert json.loads((out / "baselines" / f"{name}.json").read_text())["epochs_run"] == 4
    local_params = sum(e["parameters"] for e in results["local"])
    assert g["parameters"] > local_params  # full width vs proportionally smaller local CNNs
    assert results["baselines"]["coherent"]["parameters"] == local_params + results["aggregation"]["dnn"]["parameters"]


@pytest.mark.ray
def test_transfer_starts_from_the_local_weights_and_beats_or_matches_the_dnn(compared_run):
    results, out = compared_run
    transfer = results["baselines"]["transfer"]
    saved = []
    for i in range(4):
        state, spec = RunDir(out).load_local_model(i)
        model = spec.model.build()
        model.load_state_dict(state)
        saved.append(parameter_checksum(model))
    assert transfer["initial_local_checksums"] == saved  # recorded inside the Ray Train worker before training
    assert transfer["start"] == "local CNNs + DNN"
    assert results["baselines"]["coherent"]["initial_local_checksums"] != saved
    # the label needs all subdomains jointly: averaging cannot count, the DNN can, fine-tuning end to end helps
    dnn = results["aggregation"]["dnn"]["test_accuracy"]
    assert results["aggregation"]["average"]["test_accuracy"] < dnn
    assert transfer["best_epoch"] >= 1, "fine-tuning must have changed the model for the comparison to mean something"
    assert transfer["test_accuracy"] >= dnn


@pytest.mark.ray
def test_comparison_table_and_chart(compared_run):
    results, out = compared_run
    table = pd.read_csv(out / "results.csv")
    assert table.model.tolist() == ["local 0", "local 1", "local 2", "local 3", "dnn", "average", "vote", "global", "coherent", "transfer"]
    assert {"test_accuracy", "parameters", "train_wall_s", "time_to_model_s", "speedup_vs_global"} <= set(table.columns)
    assert table.set_index("model").loc["global", "speedup_vs_global"] == pytest.approx(1.0)
    md = (out / "results.md").read_text()
    assert "speedup" in md and "| transfer | baseline |" in md
    saved = json.loads((out / "results.json").read_text())
    assert set(saved["baselines"]) == {"global", "coherent", "transfer"} and "dnn" in saved["aggregation"]
    assert saved["comparison"]["speedup"] > 0 and saved["comparison"]["speedup_compute"] > 0
    assert (out / "accuracy.png").stat().st_size > 10_000
