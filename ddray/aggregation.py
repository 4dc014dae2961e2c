"""The coarse level: turning N local class-probability vectors into one decision.

``average`` and ``vote`` are the cheap baselines of arXiv 2408.14442; ``dnn``
trains the dense coarse network on the local probabilities. All functions
take probabilities shaped (samples, subdomains, classes).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ddray.models import count_parameters
from ddray.training.loop import FitResult, fit, predict_proba
from ddray.training.spec import DNNSpec


def stack_probabilities(per_subdomain: list[np.ndarray]) -> np.ndarray:
    """[(n, K)] * N -> (n, N, K) float32."""
    return np.stack(per_subdomain, axis=1).astype(np.float32)


def average_predict(probs: np.ndarray) -> np.ndarray:
    """Class with the highest mean local probability."""
    return probs.mean(axis=1).argmax(axis=1)


def vote_predict(probs: np.ndarray) -> np.ndarray:
    """Majority of local decisions; ties go to the tied class with the higher mean probability."""
    n, _, k = probs.shape
    decisions = probs.argmax(axis=2)  # (n, N)
    counts = np.zeros((n, k), dtype=np.float64)
    np.add.at(counts, (np.arange(n)[:, None], decisions), 1.0)
    # mean probability < 1 breaks ties without ever outweighing a whole vote
    return (counts + probs.mean(axis=1) * 0.5).argmax(axis=1)


def accuracy(pred: np.ndarray, y: np.ndarray) -> float:
    return float((np.asarray(pred) == np.asarray(y)).mean()) if len(y) else float("nan")


@dataclass
class DNNOutcome:
    model: torch.nn.Module
    fit: FitResult
    test_probabilities: np.ndarray
    test_accuracy: float
    parameters: int


def train_dnn(probs: dict[str, np.ndarray], labels: dict[str, np.ndarray], spec: DNNSpec) -> DNNOutcome:
    """Train the coarse DNN on train-split local probabilities, select on validation, score on test."""
    n_sub, k = probs["train"].shape[1:]
    if (n_sub, k) != (spec.num_subdomains, spec.num_classes):
        raise ValueError(f"probabilities for {n_sub} subdomains x {k} classes, the DNN spec expects "
                         f"{spec.num_subdomains} x {spec.num_classes}")
    torch.manual_seed(spec.seed)
    model = spec.build()
    tensors = {s: torch.from_numpy(np.array(p, dtype=np.float32, order="C")) for s, p in probs.items()}
    ys = {s: torch.from_numpy(np.array(v, dtype=np.int64)) for s, v in labels.items()}
    result = fit(
        model,
        tensors["train"],
        ys["train"],
        tensors["val"],
        ys["val"],
        epochs=spec.epochs,
        batch_size=spec.batch_size,
        optimizer=spec.optimizer,
        seed=spec.seed,
    )
    test_probs = predict_proba(model, tensors["test"])
    return DNNOutcome(
        model=model,
        fit=result,
        test_probabilities=test_probs,
        test_accuracy=accuracy(test_probs.argmax(1), labels["test"]),
        parameters=count_parameters(model),
    )
