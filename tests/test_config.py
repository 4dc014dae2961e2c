"""The config contract: the documented keys parse; mistakes name the field and the fix."""

import pytest
import yaml

from ddray.config import ConfigError, load_config, parse_config

ISSUE_EXAMPLE = """
dataset: {source: npz, path: data.npz}
decomposition: {grid: [2, 2], overlap: 2}
local_model: {name: small_cnn, width: 0.5}
training: {epochs: 10, batch_size: 64, lr: 0.003, optimizer: adam}
aggregation: {methods: [dnn, average, vote], dnn: {hidden: [64], epochs: 60}}
resources: {cpus_per_subdomain: 1, gpus_per_subdomain: 0}
seed: 0
tune:
  num_samples: 2
  search_alg: random
  scheduler: none
  space: {lr: {loguniform: [0.0003, 0.01]}, batch_size: {choice: [32, 64]}}
compare: [global, coherent, transfer]
"""


def test_documented_example_parses(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(ISSUE_EXAMPLE)
    cfg = load_config(path)
    assert cfg.decomposition.num_subdomains == 4
    assert cfg.aggregation.dnn.hidden == [64]
    assert cfg.tune.space["lr"].loguniform == [0.0003, 0.01]
    assert cfg.compare == ["global", "coherent", "transfer"]


def test_3d_grid_and_fractional_gpu():
    cfg = parse_config({"decomposition": {"grid": [2, 2, 2]}, "resources": {"gpus_per_subdomain": 0.25},
                        "dataset": {"source": "synthetic", "size": [16, 16, 16]}})
    assert cfg.spatial_dims == 3
    assert cfg.resources.gpus_per_subdomain == 0.25


@pytest.mark.parametrize(
    "data,fragments",
    [
        ({"training": {"optimizer": "adagrad"}}, ["training.optimizer", "adam", "sgd"]),
        ({"dataset": {"source": "mnist3d"}}, ["dataset.source", "digits", "npz", "mnist", "cifar100", "imagefolder", "volumefolder"]),
        ({"local_model": {"name": "alexnet"}}, ["local_model.name", "known models", "small_cnn", "resnet18", "vgg11"]),
        ({"decomposition": {"grid": [2, 2, 2, 2]}}, ["decomposition.grid", "[rows, cols]"]),
        ({"aggregation": {"methods": ["median"]}}, ["aggregation.methods", "dnn", "average", "vote"]),
        ({"resources": {"gpus_per_subdomain": 1.5}}, ["resources.gpus_per_subdomain", "whole number"]),
        ({"trainig": {"epochs": 3}}, ["trainig", "Extra inputs are not permitted"]),
        ({"dataset": {"source": "npz"}}, ["dataset.path is required"]),
        ({"training": {"lr": -1}}, ["training.lr", "greater than 0"]),
        ({"tune": {"space": {"momentum2": {"choice": [1]}}}}, ["tune.space", "tunable"]),
        ({"tune": {"search_alg": "optuna", "space": {"lr": {"grid": [0.1, 0.2]}}}}, ["optuna", "grid"]),
        ({"tune": {"space": {"lr": {"loguniform": [0.1, 0.01]}}}}, ["low < high"]),
        ({"dataset": {"source": "synthetic", "size": [16, 16]}, "decomposition": {"grid": [2, 2, 2]}}, ["3 for volumes"]),
    ],
)
def test_invalid_configs_name_field_and_allowed_values(data, fragments):
    with pytest.raises(ConfigError) as err:
        parse_config(data)
    for fragment in fragments:
        assert fragment in str(err.value)


def test_bad_yaml_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("dataset: {source: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    notmap = tmp_path / "list.yaml"
    notmap.write_text(yaml.safe_dump([1, 2]))
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config(notmap)
