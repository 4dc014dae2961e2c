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
from ddray.training.spec import DNNSpec, ModelSpec, OptimizerSpec, SpecError, TrainingSpec

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # torch fits in this process: see conftest


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


def _transfer_start():
    local = LOCAL
    trained = []
    for i in range(2):
        torch.manual_seed(100 + i)
        trained.append(local.model.build())
    torch.manual_seed(7)
    dnn = DNNAggregator(2, 3, hidden=[16])
    return TransferStart([local, local], [m.state_dict() for m in trained], dnn.state_dict()), trained, dnn


@pytest.mark.parametrize("init", ["locals", "locals_and_dnn"])
def test_transfer_init_copies_the_local_cnns_and_the_dnn_only_when_asked(init):
    subs = decompose((8, 8), [1, 2])
    start, trained, dnn = _transfer_start()
    job = BaselineJob("transfer", _settings("transfer", hidden=(16,)).training, DNNSpec(2, 3, hidden=(16,)), init)
    model = build_model(job, subs, [LOCAL, LOCAL], start)
    assert [parameter_checksum(m) for m in model.local_models] == [parameter_checksum(m) for m in trained]
    coherent = build_model(_settings("coherent", hidden=(16,)), subs, [LOCAL, LOCAL])
    assert parameter_checksum(coherent.local_models[0]) != parameter_checksum(trained[0])
    if init == "locals_and_dnn":
        assert parameter_checksum(model.dnn) == parameter_checksum(dnn)
        assert job.start_label == "local CNNs + DNN"
    else:  # the papers' transfer: a fresh DNN, the coherent model's own seeded init
        assert parameter_checksum(model.dnn) != parameter_checksum(dnn)
        assert parameter_checksum(model.dnn) == parameter_checksum(coherent.dnn)
        assert job.start_label == "local CNNs + fresh DNN"
    assert BaselineJob("transfer", job.training, job.dnn).transfer_init == "locals"  # the default
    without_dnn = TransferStart(start.local_specs, start.local_states, None)
    if init == "locals_and_dnn":
        with pytest.raises(ValueError, match="needs the trained DNN"):
            build_model(job, subs, [LOCAL, LOCAL], without_dnn)
    else:
        assert parameter_checksum(build_model(job, subs, [LOCAL, LOCAL], without_dnn)) == parameter_checksum(model)
    with pytest.raises(SpecError, match="transfer_init"):
        BaselineJob("transfer", job.training, job.dnn, "everything")


def test_transfer_start_is_reported_on_its_own_not_as_epoch_0():
    subs = decompose((8, 8), [1, 2])
    start, _, _ = _transfer_start()
    job = BaselineJob("transfer", _settings("transfer", lr=1e-12, epochs=2).training, DNNSpec(2, 3, hidden=(16,)), "locals_and_dnn")
    arrays = _arrays()
    before = build_model(job, subs, [LOCAL, LOCAL], start)
    expected = float((before.eval()(torch.from_numpy(arrays["x_test"])).argmax(1).numpy() == arrays["y_test"]).mean())
    model = build_model(job, subs, [LOCAL, LOCAL], start)
    outcome = train_baseline(model, arrays, job)
    # nothing is learnt (lr ~0), yet the selected model is a fine-tuned epoch: the start does not compete
    assert outcome.best_epoch >= 1 and [h["epoch"] for h in outcome.history] == [1, 2]
    assert outcome.start_test_accuracy == pytest.approx(expected)
    assert outcome.start_validation_accuracy is not None and outcome.transfer_init == "locals_and_dnn"
    summary = outcome.summary()
    assert {"start_test_accuracy", "start_validation_accuracy", "transfer_init"} <= set(summary)


def test_transfer_start_reads_the_dnn_only_for_locals_and_dnn(tmp_path):
    from ddray.errors import BaselineFailed
    from ddray.orchestration.train_jobs import transfer_start

    subs = decompose((8, 8), [1, 2])
    start, trained, dnn = _transfer_start()
    run_dir = RunDir(tmp_path)
    for sub, m in zip(subs, trained):
        run_dir.save_local_model(sub.index, m.state_dict(), LOCAL.to_dict(), {})
    assert transfer_start(run_dir, subs, "locals").dnn_state is None
    with pytest.raises(BaselineFailed, match="locals_and_dnn needs the trained DNN"):
        transfer_start(run_dir, subs, "locals_and_dnn")
    run_dir.save_dnn(dnn.state_dict(), DNNSpec(2, 3, hidden=(16,)))
    loaded = transfer_start(run_dir, subs, "locals_and_dnn")
    assert loaded.local_specs == [LOCAL, LOCAL]
    assert all(torch.equal(loaded.dnn_state[k], v) for k, v in dnn.state_dict().items())
    assert transfer_start(run_dir, subs, "locals").dnn_state is None


def test_transfer_init_needs_a_dnn_at_config_time():
    from ddray.config import ConfigError

    with pytest.raises(ConfigError, match="baselines.transfer_init"):
        parse_config({"compare": ["transfer"], "baselines": {"transfer_init": "locals_and_dnn"}, "aggregation": {"methods": ["vote"]}})
    assert parse_config({"compare": ["transfer"], "aggregation": {"methods": ["vote"]}}).baselines.transfer_init == "locals"


def test_global_model_is_the_full_width_family_member():
    g = build_model(_settings("global"))
    local = LOCAL.model.build()
    assert sum(p.numel() for p in g.parameters()) > 4 * sum(p.numel() for p in local.parameters())
    before = parameter_checksum(g)
    arrays = _arrays(size=16)
    outcome = train_baseline(g, arrays, _settings("global", epochs=2))
    assert outcome.initial_checksum == before and parameter_checksum(g) != before  # it trained
    assert outcome.initial_local_checksums == [] and len(outcome.history) == 2
    assert outcome.start_test_accuracy is None and outcome.transfer_init is None  # transfer only
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
            "baselines": {"epochs": 4, "transfer_init": "locals_and_dnn"},
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
def test_transfer_starts_from_the_local_weights_and_its_start_scores_as_the_dnn(compared_run):
    results, out = compared_run
    transfer = results["baselines"]["transfer"]
    saved = []
    for i in range(4):
        state, spec = RunDir(out).load_local_model(i)
        model = spec.model.build()
        model.load_state_dict(state)
        saved.append(parameter_checksum(model))
    assert transfer["initial_local_checksums"] == saved  # recorded inside the Ray Train worker before training
    assert transfer["start"] == "local CNNs + DNN" and transfer["transfer_init"] == "locals_and_dnn"
    assert results["baselines"]["coherent"]["initial_local_checksums"] != saved
    # the label needs all subdomains jointly: averaging cannot count, the DNN can, fine-tuning end to end helps
    dnn = results["aggregation"]["dnn"]["test_accuracy"]
    assert results["aggregation"]["average"]["test_accuracy"] < dnn
    # the start is the local CNNs + DNN themselves, scored inside the Ray Train worker: the DNN's own accuracy
    assert transfer["start_test_accuracy"] == pytest.approx(dnn, abs=0.015)
    assert transfer["best_epoch"] >= 1, "the start is reported on its own, never selected as an 'epoch 0'"
    assert transfer["test_accuracy"] >= dnn - 0.05
    ratio = results["parameters"]
    assert ratio["local_total"] == sum(e["parameters"] for e in results["local"])
    assert ratio["global_model"] == results["baselines"]["global"]["parameters"]
    assert ratio["local_to_global"] == pytest.approx(ratio["local_total"] / ratio["global_model"], abs=1e-4)


@pytest.mark.ray
def test_comparison_table_and_chart(compared_run):
    results, out = compared_run
    table = pd.read_csv(out / "results.csv")
    assert table.model.tolist() == ["local 0", "local 1", "local 2", "local 3", "dnn", "average", "vote", "global", "coherent", "transfer"]
    assert {"test_accuracy", "parameters", "train_wall_s", "time_to_model_s", "speedup_vs_global"} <= set(table.columns)
    assert table.set_index("model").loc["global", "speedup_vs_global"] == pytest.approx(1.0)
    md = (out / "results.md").read_text()
    assert "speedup" in md and "| transfer | baseline |" in md
    start = results["baselines"]["transfer"]["start_test_accuracy"]
    assert f"Transfer learning started (local CNNs and trained DNN) at test accuracy {start:.4f}" in md
    assert f"{results['parameters']['local_to_global']:.2f}x the global model's" in md
    saved = json.loads((out / "results.json").read_text())
    assert set(saved["baselines"]) == {"global", "coherent", "transfer"} and "dnn" in saved["aggregation"]
    assert saved["comparison"]["speedup"] > 0 and saved["comparison"]["speedup_compute"] > 0
    assert (out / "accuracy.png").stat().st_size > 10_000
