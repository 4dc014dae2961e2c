"""Named configs: ``ddray demo`` runs DEMO; examples/*.yaml show the same keys as files."""

from __future__ import annotations

from ddray.config import RunConfig, parse_config

# Real handwritten digits (scikit-learn's bundled set) upsampled to 32x32, cut
# 2x2 with 2 px overlap: each local CNN sees about a quarter of a digit.
DEMO = {
    "dataset": {"source": "digits"},
    "decomposition": {"grid": [2, 2], "overlap": 2},
    "local_model": {"name": "small_cnn", "width": 0.5},
    "training": {"epochs": 12, "batch_size": 64, "lr": 0.003, "optimizer": "adam"},
    "aggregation": {"methods": ["dnn", "average", "vote"], "dnn": {"hidden": [64], "epochs": 60}},
    "resources": {"cpus_per_subdomain": 1, "gpus_per_subdomain": 0},
    "seed": 0,
}


def demo_config() -> RunConfig:
    return parse_config(DEMO)
