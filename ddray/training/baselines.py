"""The comparison models of arXiv 2408.14442, trained with the same loop as everything else.

- ``global``: the undecomposed CNN of the same family at full width (``width=1.0``)
  on whole images.
- ``coherent``: every local CNN plus the DNN as one network
  (:class:`~ddray.models.CoherentCNNDNN`), trained end to end from a random start.
- ``transfer``: the same network started from the trained local CNNs, with a fresh DNN
  (``baselines.transfer_init: locals``, the papers' wording: the pre-trained local CNNs are
  the initial values) or with the trained DNN as well (``locals_and_dnn``). The start is
  scored on validation and test before training and reported as its own numbers
  (``start_validation_accuracy``, ``start_test_accuracy``); the model returned is the best
  fine-tuned epoch on validation (``best_epoch >= 1``), never the start itself.

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

import hashlib
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from ddray.config import RunConfig
from ddray.decomposition import Subdomain
from ddray.models import CoherentCNNDNN, count_parameters
from ddray.training.loop import Callback, evaluate, fit
from ddray.training.spec import BASELINE_NAMES, DNNSpec, SpecError, TrainingSpec, training_spec

TRANSFER_INITS = ("locals", "locals_and_dnn")


@dataclass(frozen=True)
class BaselineJob:
    """One comparison model to train: which, its training, and the coarse DNN of coherent/transfer."""

    name: str  # global | coherent | transfer
    training: TrainingSpec  # optimizer, epochs, global batch, seed; its model is the global CNN
    dnn: DNNSpec
    transfer_init: str = "locals"  # transfer only: locals | locals_and_dnn

    def __post_init__(self) -> None:
        if self.name not in BASELINE_NAMES:
            raise SpecError(f"unknown baseline '{self.name}': compare may list {', '.join(BASELINE_NAMES)}")
        if self.transfer_init not in TRANSFER_INITS:
            raise SpecError(f"baselines.transfer_init '{self.transfer_init}' must be one of {', '.join(TRANSFER_INITS)}")

    @property
    def start_label(self) -> str:
        if self.name != "transfer":
            return "random"
        return "local CNNs + DNN" if self.transfer_init == "locals_and_dnn" else "local CNNs + fresh DNN"

    def to_dict(self) -> dict[str, Any]:
        out = {"name": self.name, "training": self.training.to_dict(), "dnn": self.dnn.to_dict()}
        if self.name == "transfer":
            out["transfer_init"] = self.transfer_init
        return out


@dataclass
class TransferStart:
    """Initial values of the transfer model: the trained local CNNs, and the trained DNN for ``locals_and_dnn``."""

    local_specs: list[TrainingSpec]  # per subdomain, as saved with its weights
    local_states: list[dict[str, torch.Tensor]]
    dnn_state: dict[str, torch.Tensor] | None = None


@dataclass
class BaselineOutcome:
    name: str
    test_accuracy: float
    validation_accuracy: float
    best_epoch: int  # the selected fine-tuning epoch, >= 1
    history: list[dict[str, float]]
    parameters: int
    train_wall_s: float
    initial_checksum: str
    initial_local_checksums: list[str] = field(default_factory=list)
    start_validation_accuracy: float | None = None  # transfer: its start, before any training
    start_test_accuracy: float | None = None
    transfer_init: str | None = None
    world_size: int = 1

    def summary(self) -> dict[str, Any]:
        """JSON-safe view (no weights)."""
        out = asdict(self)
        out["epochs_run"] = len(self.history)
        out["train_wall_s"] = round(self.train_wall_s, 3)
        return out


# ------------------------------------------------------------------ models


def parameter_summary(config: RunConfig, *, num_classes: int, in_channels: int, local_parameters: Sequence[int]) -> dict[str, Any]:
    """results.json ``parameters``: the local CNNs' total against the global model's (same family, width 1,
    counted on the meta device, never trained), so ``local_model.width: auto`` (ratio ~1) can be checked."""
    local_spec = training_spec(config, num_classes=num_classes, in_channels=in_channels).model
    global_params = training_spec(config, num_classes=num_classes, in_channels=in_channels, baseline="global").model.parameter_count()
    local_total = int(sum(local_parameters))
    return {
        "local_width": local_spec.width,  # as configured or resolved from 'auto' (a Tune search may change it per subdomain)
        "width_auto": config.local_model.width == "auto",
        "local_total": local_total,
        "global_model": global_params,
        "local_to_global": round(local_total / global_params, 4) if global_params else None,
    }



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
    """The global CNN at full width, the coherent CNN-DNN, or the coherent one started from trained models.

    Transfer copies every local CNN's weights (and BatchNorm statistics) from ``start``; the DNN
    is copied too for ``job.transfer_init == "locals_and_dnn"``, else it keeps its fresh seeded init.
    """
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
    if job.transfer_init == "locals_and_dnn":
        if start.dnn_state is None:
            raise ValueError("transfer_init locals_and_dnn needs the trained DNN in the TransferStart")
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
    callers may use rank 0's. For ``transfer`` the start is scored on validation and
    test first and reported on its own (``start_*_accuracy``); it does not compete in
    model selection, which picks among the fine-tuned epochs only.
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

    inner.to(device)
    start_val = start_test = None
    if job.name == "transfer":  # scored before the clock starts: not part of its training time
        _, start_val = evaluate(inner, x_val, y_val)
        _, start_test = evaluate(inner, x_test, y_test)
    started = time.perf_counter()
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
        start_test_accuracy=None if start_test is None else float(start_test),
        transfer_init=job.transfer_init if job.name == "transfer" else None,
        world_size=world_size,
    )
