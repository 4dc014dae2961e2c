"""The comparison models of arXiv 2408.14442, trained with the same loop as everything else.

- ``global``: the undecomposed CNN of the same family at full width (``width=1.0``)
  on whole images.
- ``coherent``: every local CNN plus the DNN as one network
  (:class:`~ddray.models.CoherentCNNDNN`), trained end to end from a random start.
- ``transfer``: the same network started from the trained local CNNs and DNN.

Ray-free on purpose, like :mod:`ddray.training.local`: the Ray Train worker
(:mod:`ddray.orchestration.train_jobs`) wraps the model for DDP and passes its
rank and world size in; tests and notebooks call the same functions in one
process with ``world_size=1``.

Data parallelism: rank ``r`` of ``w`` trains on an equal-sized shard of a
seeded permutation of the training set (the remainder is dropped), with a
per-worker batch of ``batch_size // w``, so every rank runs the same number
of steps (DDP needs that) and the global batch stays ``batch_size``.
Validation and test use the full splits; selection is on validation only.
"""

from __future__ import annotations

import copy
import hashlib
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from ddray.decomposition import Subdomain
from ddray.models import CoherentCNNDNN, count_parameters
from ddray.training.loop import Callback, evaluate, fit
from ddray.training.spec import BASELINE_NAMES, DNNSpec, SpecError, TrainingSpec


@dataclass(frozen=True)
class BaselineJob:
    """One comparison model to train: which, its training, and the coarse DNN of coherent/transfer."""

    name: str  # global | coherent | transfer
    training: TrainingSpec  # optimizer, epochs, global batch, seed; its model is the global CNN
    dnn: DNNSpec

    def __post_init__(self) -> None:
        if self.name not in BASELINE_NAMES:
            raise SpecError(f"unknown baseline '{self.name}': compare may list {', '.join(BASELINE_NAMES)}")

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "training": self.training.to_dict(), "dnn": self.dnn.to_dict()}


@dataclass
class TransferStart:
    """Initial values of the transfer model: trained local CNNs (and DNN, if one was trained)."""

    local_specs: list[TrainingSpec]  # per subdomain, as saved with its weights
    local_states: list[dict[str, torch.Tensor]]
    dnn_state: dict[str, torch.Tensor] | None = None


@dataclass
class BaselineOutcome:
    name: str
    test_accuracy: float
    validation_accuracy: float
    best_epoch: int  # 0: the starting weights were kept (transfer only)
    history: list[dict[str, float]]
    parameters: int
    train_wall_s: float
    initial_checksum: str
    initial_local_checksums: list[str] = field(default_factory=list)
    start_validation_accuracy: float | None = None
    world_size: int = 1

    def summary(self) -> dict[str, Any]:
        """JSON-safe view (no weights)."""
        out = asdict(self)
        out["epochs_run"] = len(self.history)
        out["train_wall_s"] = round(self.train_wall_s, 3)
        return out


# ------------------------------------------------------------------ models


def parameter_checksum(module: nn.Module) -> str:
    """Hash of every parameter's and buffer's bytes, in state_dict order (CPU, float32 as stored)."""
    digest = hashlib.sha1()
    for name, tensor in module.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def build_coherent_model(job: BaselineJob, subdomains: Sequence[Subdomain], local_specs: Sequence[TrainingSpec]) -> CoherentCNNDNN:
    """Local CNNs (each with its own, possibly tuned, width) + DNN, randomly initialised."""
    torch.manual_seed(job.training.seed)
    return CoherentCNNDNN([s.model.build() for s in local_specs], subdomains, job.dnn.build())


def build_model(
    job: BaselineJob,
    subdomains: Sequence[Subdomain] = (),
    local_specs: Sequence[TrainingSpec] = (),
    start: TransferStart | None = None,
) -> nn.Module:
    """The global CNN at full width, the coherent CNN-DNN, or the coherent one started from trained models."""
    if job.name == "global":
        torch.manual_seed(job.training.seed)
        return job.training.model.build()
    if job.name == "coherent":
        return build_coherent_model(job, subdomains, local_specs)
    if start is None:
        raise ValueError("the transfer baseline needs the trained local models (TransferStart)")
    model = build_coherent_model(job, subdomains, start.local_specs)
    for local, state in zip(model.local_models, start.local_states):
        local.load_state_dict(state)
    if start.dnn_state is not None:
        model.dnn.load_state_dict(start.dnn_state)
    return model


# ------------------------------------------------------------------ training


def shard_indices(n: int, rank: int, world_size: int, seed: int) -> torch.Tensor:
    """Rank ``rank``'s equal-sized share of a seeded permutation of ``range(n)``."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside world size {world_size}")
    per_rank = n // world_size
    if per_rank < 2:
        raise ValueError(f"{n} training samples cannot be split over {world_size} workers (need >= 2 each)")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return order[rank * per_rank : (rank + 1) * per_rank]


def _tensor(a: np.ndarray, dtype=np.float32) -> torch.Tensor:
    """A writable copy (object-store arrays are read-only views)."""
    return torch.from_numpy(np.array(a, dtype=dtype, order="C", copy=True))


def train_baseline(
    model: nn.Module,
    arrays: Mapping[str, np.ndarray],
    job: BaselineJob,
    *,
    rank: int = 0,
    world_size: int = 1,
    device: torch.device | None = None,
    callbacks: Sequence[Callback] = (),
    unwrapped: nn.Module | None = None,
) -> BaselineOutcome:
    """Train ``model`` (plain, or DDP-wrapped with ``unwrapped`` the inner module) on whole images.

    Every rank returns the same validation figures; the test accuracy is
    computed by every rank on the unwrapped module (no collective calls), so
    callers may use rank 0's. For ``transfer`` the starting weights compete in
    model selection ("epoch 0"): fine-tuning never returns a model that is
    worse on validation than the trained local CNNs + DNN it started from.
    """
    device = device or torch.device("cpu")
    inner = unwrapped if unwrapped is not None else model
    initial_checksum = parameter_checksum(inner)
    local_checksums = [parameter_checksum(m) for m in inner.local_models] if isinstance(inner, CoherentCNNDNN) else []

    spec = job.training
    idx = shard_indices(len(arrays["y_train"]), rank, world_size, spec.seed)
    x_train = _tensor(arrays["x_train"])[idx]
    y_train = _tensor(arrays["y_train"], np.int64)[idx]
    x_val, y_val = _tensor(arrays["x_val"]), _tensor(arrays["y_val"], np.int64)
    x_test, y_test = _tensor(arrays["x_test"]), _tensor(arrays["y_test"], np.int64)

    started = time.perf_counter()
    inner.to(device)
    start_state, start_val = None, None
    if job.name == "transfer":
        start_state = copy.deepcopy(inner.state_dict())
        _, start_val = evaluate(inner, x_val, y_val)
    outcome = fit(
        model,
        x_train,
        y_train,
        x_val,
        y_val,
        epochs=spec.epochs,
        batch_size=max(1, spec.batch_size // world_size),
        optimizer=spec.optimizer,
        seed=spec.seed * 7919 + rank,
        device=device,
        callbacks=callbacks,
        recipe=spec.recipe,  # the run's recipe: the comparison trains as the local CNNs do
    )
    best_epoch, best_val = outcome.best_epoch, outcome.best_val_accuracy
    if start_state is not None and start_val is not None and start_val >= best_val:
        inner.load_state_dict(start_state)
        best_epoch, best_val = 0, start_val
    train_wall = time.perf_counter() - started
    _, test_acc = evaluate(inner, x_test, y_test)
    return BaselineOutcome(
        name=job.name,
        test_accuracy=float(test_acc),
        validation_accuracy=float(best_val),
        best_epoch=best_epoch,
        history=outcome.history,
        parameters=count_parameters(inner),
        train_wall_s=train_wall,
        initial_checksum=initial_checksum,
        initial_local_checksums=local_checksums,
        start_validation_accuracy=None if start_val is None else float(start_val),
        world_size=world_size,
    )
