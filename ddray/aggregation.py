"""The coarse level: turning N local class-probability vectors into one decision.

``average`` and ``vote`` are the cheap baselines of arXiv 2408.14442; ``dnn``
trains the dense coarse network on the local probabilities. All functions
take probabilities shaped (samples, subdomains, classes).

Which probabilities the DNN learns from is ``DNNSpec.fit_on`` (``aggregation.dnn.fit_on``):
``train``, the local CNNs' training-set probabilities (they have seen those images, so the
probabilities are over-confident); or ``val``, held-out probabilities: the validation split is
cut by a seeded permutation into a fit part (3/4) and a selection part (the last 1/4, at least
one sample) on which the epoch is chosen. Test is never used for either. See docs/models.md.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

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
    """Majority of local decisions (each local CNN votes for its argmax class).

    Tie rule: among the classes with the most votes, the one with the highest mean local
    probability wins; if that is tied too, the lowest class index. The mean probability is
    added at half weight, so it can never outweigh a whole vote.
    """
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
    fit_samples: int = 0
    selection_samples: int = 0


VAL_SELECTION_SHARE = 4  # fit_on: val selects the epoch on 1/4 of the validation split


def split_validation(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(fit, selection) indices of a validation split of ``n`` samples for ``fit_on: val``."""
    if n < 4:
        raise ValueError(
            f"aggregation.dnn.fit_on: val needs at least 4 validation samples (3 to fit, 1 to select), the data has {n}; "
            f"raise dataset.validation_fraction or use fit_on: train"
        )
    order = np.random.default_rng(seed).permutation(n)
    n_select = max(1, n // VAL_SELECTION_SHARE)
    return np.sort(order[n_select:]), np.sort(order[:n_select])


@contextmanager
def one_thread() -> Iterator[None]:
    """Torch on one thread for the enclosed coarse fit (process-wide while it lasts). The coarse nets are tiny:
    more threads gain nothing, and on busy cores they cost a lot: a 16 x 10-input DNN, 60 epochs, on 2 cores at
    load 12-16 took 26-37 s on 2 threads and 0.7-1.1 s on 1 (benchmarks/bench_coarse.py)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def train_dnn(probs: dict[str, np.ndarray], labels: dict[str, np.ndarray], spec: DNNSpec) -> DNNOutcome:
    """Train the coarse DNN on the ``spec.fit_on`` split's local probabilities, select the epoch on held-out
    ones (val, or val's selection part), score on test; on one torch thread (:func:`one_thread`)."""
    with one_thread():
        return _train_dnn(probs, labels, spec)


def _train_dnn(probs: dict[str, np.ndarray], labels: dict[str, np.ndarray], spec: DNNSpec) -> DNNOutcome:
    n_sub, k = probs["test"].shape[1:]
    if (n_sub, k) != (spec.num_subdomains, spec.num_classes):
        raise ValueError(f"probabilities for {n_sub} subdomains x {k} classes, the DNN spec expects "
                         f"{spec.num_subdomains} x {spec.num_classes}")
    torch.manual_seed(spec.seed)
    model = spec.build()
    tensors = {s: torch.from_numpy(np.array(p, dtype=np.float32, order="C")) for s, p in probs.items()}
    ys = {s: torch.from_numpy(np.array(v, dtype=np.int64)) for s, v in labels.items()}
    if spec.fit_on == "val":
        fit_idx, select_idx = (torch.from_numpy(i) for i in split_validation(len(ys["val"]), spec.seed))
        x_fit, y_fit = tensors["val"][fit_idx], ys["val"][fit_idx]
        x_sel, y_sel = tensors["val"][select_idx], ys["val"][select_idx]
    else:
        x_fit, y_fit, x_sel, y_sel = tensors["train"], ys["train"], tensors["val"], ys["val"]
    result = fit(
        model,
        x_fit,
        y_fit,
        x_sel,
        y_sel,
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
        fit_samples=len(y_fit),
        selection_samples=len(y_sel),
    )


def aggregate(
    methods: Sequence[str], probs: dict[str, np.ndarray], labels: dict[str, np.ndarray], dnn: DNNSpec | None = None
) -> tuple[dict[str, Any], DNNOutcome | None]:
    """Every aggregation method of a run on its stacked local probabilities: (results['aggregation'], the
    trained DNN's outcome: model, per-epoch history in ``fit.history``, test probabilities).

    In the calling process, which the driver picks (``coarse_phase.after_local_phase``): the local
    phase's last worker, or the driver itself. The DNN is small (subdomains x classes inputs), so
    fitting it there costs its fit and nothing else, where a new process would first import torch.
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
                "validation_accuracy": outcome.fit.best_val_accuracy,  # on the selection samples
                "best_epoch": outcome.fit.best_epoch,
                "fit_on": dnn.fit_on,
                "fit_samples": outcome.fit_samples,
                "selection_samples": outcome.selection_samples,
                "parameters": outcome.parameters,
                "train_wall_s": round(time.perf_counter() - started, 3),
                "fit_seconds": round(outcome.fit.seconds, 3),
            }
        else:
            raise ValueError(f"unknown aggregation method '{method}'; known: dnn, average, vote")
    return out, trained
