"""The coarse level: turning N local class-probability vectors into one decision.

``average`` and ``vote`` are the cheap baselines of arXiv 2408.14442; ``dnn``
trains the dense coarse network on the local probabilities. All functions
take probabilities shaped (samples, subdomains, classes).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Sequence

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


def aggregate(
    methods: Sequence[str], probs: dict[str, np.ndarray], labels: dict[str, np.ndarray], dnn: DNNSpec | None = None
) -> tuple[dict[str, Any], DNNOutcome | None]:
    """Every aggregation method of a run on its stacked local probabilities: (results['aggregation'], the
    trained DNN's outcome: model, per-epoch history in ``fit.history``, test probabilities).

    In the driver's own process: the DNN is small (subdomains x classes inputs), so fitting it
    here costs its fit and nothing else, where a Ray task would first start a process and import torch.
    """
    out: dict[str, Any] = {}
    trained = None
    for method in methods:
        if method == "average":
            out["average"] = {"test_accuracy": accuracy(average_predict(probs["test"]), labels["test"]), "parameters": 0}
        elif method == "vote":
            out["vote"] = {"test_accuracy": accuracy(vote_predict(probs["test"]), labels["test"]), "parameters": 0}
        elif method == "dnn":
            if dnn is None:
                raise ValueError("the dnn method needs a DNNSpec")
            started = time.perf_counter()
            outcome = trained = train_dnn(probs, labels, dnn)
            out["dnn"] = {
                "test_accuracy": outcome.test_accuracy,
                "validation_accuracy": outcome.fit.best_val_accuracy,
                "best_epoch": outcome.fit.best_epoch,
                "parameters": outcome.parameters,
                "train_wall_s": round(time.perf_counter() - started, 3),
                "fit_seconds": round(outcome.fit.seconds, 3),
            }
        else:
            raise ValueError(f"unknown aggregation method '{method}'; known: dnn, average, vote")
    return out, trained
