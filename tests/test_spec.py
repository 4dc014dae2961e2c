"""The training spec: built from a config in one place, validated on construction, saved and reloaded."""

from __future__ import annotations

import pickle

import pytest

from ddray.config import ConfigError, parse_config
from ddray.run_dir import RunDir
from ddray.training.spec import DNNSpec, ModelSpec, OptimizerSpec, SpecError, TrainingSpec, dnn_spec, training_spec

CONFIG = {
    "dataset": {"source": "digits"},
    "local_model": {"name": "small_cnn", "width": 0.5},
    "training": {"epochs": 7, "batch_size": 32, "lr": 0.01, "optimizer": "sgd", "weight_decay": 0.001, "momentum": 0.8},
    "baselines": {"epochs": 3, "lr": 0.002},
    "aggregation": {"dnn": {"hidden": [32, 16], "epochs": 20, "lr": 0.005, "batch_size": 64, "dropout": 0.1}},
    "resources": {"gpus_per_subdomain": 0.25},
    "seed": 5,
}


def test_local_spec_takes_every_training_setting_from_the_config():
    spec = training_spec(parse_config(CONFIG), num_classes=10, in_channels=1)
    assert spec.model == ModelSpec("small_cnn", 0.5, in_channels=1, num_classes=10, spatial_dims=2)
    assert spec.optimizer == OptimizerSpec("sgd", 0.01, weight_decay=0.001, momentum=0.8)
    assert (spec.epochs, spec.batch_size, spec.seed) == (7, 32, 5)
    assert spec.device.gpus == 0.25 and spec.device.use_gpu


def test_baseline_spec_uses_the_baselines_section_and_the_full_width_global_model():
    config = parse_config(CONFIG)
    g = training_spec(config, num_classes=10, in_channels=1, baseline="global")
    assert g.model.width == 1.0 and g.epochs == 3 and g.optimizer.lr == 0.002
    assert g.batch_size == 32, "unset baselines.batch_size follows training.batch_size"
    assert g.optimizer.name == "sgd" and not g.device.use_gpu, "Ray Train picks the baselines' device"
    coherent = training_spec(config, num_classes=10, in_channels=1, baseline="coherent")
    assert coherent.model.width == 0.5


def test_tune_overrides_land_in_the_right_place_and_are_validated():
    base = training_spec(parse_config(CONFIG), num_classes=10, in_channels=1)
    tuned = base.with_overrides({"lr": 0.1, "width": 0.25, "batch_size": 16, "epochs": 2, "optimizer": "adam", "weight_decay": 0.0})
    assert tuned.model.width == 0.25 and tuned.optimizer == OptimizerSpec("adam", 0.1, 0.0, 0.8)
    assert (tuned.epochs, tuned.batch_size) == (2, 16)
    assert base.model.width == 0.5, "frozen: the base spec is unchanged"
    with pytest.raises(SpecError, match=r"narrow tune.space.width"):
        base.with_overrides({"width": 1.5})
    with pytest.raises(SpecError, match="cannot override"):
        base.with_overrides({"dropout": 0.5})


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: ModelSpec("no_such_net", 0.5, 1, 10), "set local_model.name to one of"),
        (lambda: ModelSpec("small_cnn", 0.0, 1, 10), r"local_model.width"),
        (lambda: ModelSpec("small_cnn", 0.5, 1, 1), ">= 2 classes"),
        (lambda: ModelSpec("small_cnn", 0.5, 1, 10, spatial_dims=4), "spatial_dims"),
        (lambda: OptimizerSpec("rmsprop"), "training.optimizer"),
        (lambda: OptimizerSpec("adam", lr=-1.0), "training.lr"),
        (lambda: OptimizerSpec("sgd", momentum=1.0), "training.momentum"),
        (lambda: TrainingSpec(ModelSpec("small_cnn", 0.5, 1, 10), epochs=0), "training.epochs"),
        (lambda: TrainingSpec(ModelSpec("small_cnn", 0.5, 1, 10), batch_size=0), "training.batch_size"),
        (lambda: DNNSpec(4, 10, hidden=(0,)), "aggregation.dnn.hidden"),
        (lambda: DNNSpec(4, 10, dropout=1.0), "aggregation.dnn.dropout"),
    ],
)
def test_a_bad_setting_fails_on_construction_naming_what_to_change(build, message):
    with pytest.raises(SpecError, match=message) as err:
        build()
    assert isinstance(err.value, ConfigError), "the CLI reports it as bad input (exit 2), not as a crash"


def test_spec_round_trips_through_its_dict_and_pickle():
    spec = training_spec(parse_config(CONFIG), num_classes=10, in_channels=3)
    assert TrainingSpec.from_dict(spec.to_dict()) == spec
    assert pickle.loads(pickle.dumps(spec)) == spec  # it travels to Ray workers
    dnn = dnn_spec(parse_config(CONFIG), num_subdomains=4, num_classes=10)
    assert dnn == DNNSpec(4, 10, hidden=(32, 16), dropout=0.1, epochs=20, lr=0.005, batch_size=64, seed=5)
    assert DNNSpec.from_dict(dnn.to_dict()) == dnn


def test_models_saved_by_ddray_0_1_still_load(tmp_path):
    """Runs made before the spec kept flat ``settings`` (local CNNs) and flat DNN fields; predict must still load them."""
    import torch

    legacy_local = {
        "model": "small_cnn", "width": 0.25, "epochs": 3, "batch_size": 16, "lr": 0.01, "optimizer": "adam",
        "weight_decay": 0.0, "momentum": 0.9, "num_classes": 4, "in_channels": 1, "spatial_dims": 2, "seed": 2,
        "use_gpu": True, "gpus": 0.5, "require_cuda": False,
    }
    model = ModelSpec("small_cnn", 0.25, 1, 4).build()
    run_dir = RunDir(tmp_path)
    run_dir.local_models.mkdir(parents=True)
    torch.save({"state_dict": model.state_dict(), "settings": legacy_local, "subdomain": {}}, run_dir.local_model(0))
    state, spec = run_dir.load_local_model(0)
    assert spec.model == ModelSpec("small_cnn", 0.25, 1, 4) and spec.epochs == 3 and spec.seed == 2
    assert spec.device.gpus == 0.5
    assert state.keys() == model.state_dict().keys()

    dnn = DNNSpec(4, 4, hidden=(8,))
    legacy_dnn = {"state_dict": dnn.build().state_dict(), "num_subdomains": 4, "num_classes": 4, "hidden": [8],
                  "epochs": 60, "lr": 0.003, "batch_size": 128, "dropout": 0.0}
    torch.save(legacy_dnn, run_dir.dnn)
    assert run_dir.load_dnn()[1] == dnn
