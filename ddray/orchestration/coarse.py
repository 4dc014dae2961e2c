"""The coarse step as its own Ray task: the DNN trained on local probabilities.

Its inputs are small (samples x subdomains x classes), so one task with the
subdomain share of one CPU is enough; Ray schedules it next to its inputs.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import ray

from ddray.aggregation import train_dnn
from ddray.training.spec import DNNSpec


@ray.remote
def _coarse_task(probs: dict[str, np.ndarray], labels: dict[str, np.ndarray], spec: DNNSpec) -> dict[str, Any]:
    import torch

    torch.set_num_threads(1)
    outcome = train_dnn(probs, labels, spec)
    return {
        "state_dict": {k: v.cpu() for k, v in outcome.model.state_dict().items()},
        "test_accuracy": outcome.test_accuracy,
        "validation_accuracy": outcome.fit.best_val_accuracy,
        "best_epoch": outcome.fit.best_epoch,
        "history": outcome.fit.history,
        "parameters": outcome.parameters,
        "test_probabilities": outcome.test_probabilities,
        "train_seconds": outcome.fit.seconds,
    }


def run_coarse_step(probs: dict[str, np.ndarray], labels: dict[str, np.ndarray], spec: DNNSpec, cpus: float = 1.0) -> dict[str, Any]:
    """Train the DNN aggregator on the cluster and wait for it."""
    return ray.get(_coarse_task.options(num_cpus=cpus).remote(probs, labels, spec))
