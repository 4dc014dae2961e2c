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
from ddray.models import CoherentCNNDNN, DNNAggregator, count_parameters, create_model
from ddray.training.local import LocalSettings, build_local_model
from ddray.training.loop import Callback, OptimizerSettings, evaluate, fit

BASELINE_NAMES = ("global", "coherent", "transfer")


@dataclass
class BaselineSettings:
    """How one comparison model is built and trained (picklable, small)."""

    name: str  # global | coherent | transfer
    model: str  # registered CNN family
    num_classes: int
    in_channels: int
    spatial_dims: int
    epochs: int
    batch_size: int
    lr: float
    optimizer: str = "adam"
    weight_decay: float = 0.0
    momentum: float = 0.9
    seed: int = 0
    dnn_hidden: list[int] = field(default_factory=lambda: [64])
    dnn_dropout: float = 0.0

    def __post_init__(self) -> None:
        if self.name not in BASELINE_NAMES:
            raise ValueError(f"unknown baseline '{self.name}'; known: {', '.join(BASELINE_NAMES)}")

    def optimizer_settings(self) -> OptimizerSettings:
        return OptimizerSettings(self.optimizer, self.lr, self.weight_decay, self.momentum)


@dataclass
class TransferStart:
    """Initial values of the transfer model: trained local CNNs (and DNN, if one was trained)."""

    local_settings: list[LocalSettings]  # per subdomain, as saved with its weights
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


def build_global_model(settings: BaselineSettings) -> nn.Module:
    """The undecomposed CNN of the local family at full width."""
    return create_model(
        settings.model,
        in_channels=settings.in_channels,
        num_classes=settings.num_classes,
        spatial_dims=settings.spatial_dims,
        width=1.0,
    )


def build_coherent_model(
    settings: BaselineSettings, subdomains: Sequence[Subdomain], local_settings: Sequence[LocalSettings]
) -> CoherentCNNDNN:
    """Local CNNs (each with its own, possibly tuned, width) + DNN, randomly initialised."""
    torch.manual_seed(settings.seed)
    local_models = [build_local_model(s) for s in local_settings]
    dnn = DNNAggregator(len(subdomains), settings.num_classes, hidden=settings.dnn_hidden, dropout=settings.dnn_dropout)
    return CoherentCNNDNN(local_models, subdomains, dnn)


def build_transfer_model(settings: BaselineSettings, subdomains: Sequence[Subdomain], start: TransferStart) -> CoherentCNNDNN:
    """The coherent model whose initial values are the trained local CNNs (and DNN)."""
    model = build_coherent_model(settings, subdomains, start.local_settings)
    for local, state in zip(model.local_models, start.local_states):
        local.load_state_dict(state)
    if start.dnn_state is not None:
        model.dnn.load_state_dict(start.dnn_state)
    return model


def build_model(
    settings: BaselineSettings,
    subdomains: Sequence[Subdomain] = (),
    local_settings: Sequence[LocalSettings] = (),
    start: TransferStart | None = None,
) -> nn.Module:
    if settings.name == "global":
        torch.manual_seed(settings.seed)
        return build_global_model(settings)
    if settings.name == "coherent":
        return build_coherent_model(settings, subdomains, local_settings)
    if start is None:
        raise ValueError("the transfer baseline needs the trained local models (TransferStart)")
    return build_transfer_model(settings, subdomains, start)


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
    settings: BaselineSettings,
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

    idx = shard_indices(len(arrays["y_train"]), rank, world_size, settings.seed)
    x_train = _tensor(arrays["x_train"])[idx]
    y_train = _tensor(arrays["y_train"], np.int64)[idx]
    x_val, y_val = _tensor(arrays["x_val"]), _tensor(arrays["y_val"], np.int64)
    x_test, y_test = _tensor(arrays["x_test"]), _tensor(arrays["y_test"], np.int64)

    started = time.perf_counter()
    inner.to(device)
    start_state, start_val = None, None
    if settings.name == "transfer":
        start_state = copy.deepcopy(inner.state_dict())
        _, start_val = evaluate(inner, x_val, y_val)
    outcome = fit(
        model,
        x_train,
        y_train,
        x_val,
        y_val,
        epochs=settings.epochs,
        batch_size=max(1, settings.batch_size // world_size),
        optimizer=settings.optimizer_settings(),
        seed=settings.seed * 7919 + rank,
        device=device,
        callbacks=callbacks,
    )
    best_epoch, best_val = outcome.best_epoch, outcome.best_val_accuracy
    if start_state is not None and start_val is not None and start_val >= best_val:
        inner.load_state_dict(start_state)
        best_epoch, best_val = 0, start_val
    train_wall = time.perf_counter() - started
    _, test_acc = evaluate(inner, x_test, y_test)
    return BaselineOutcome(
        name=settings.name,
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
