"""Training one subdomain's local CNN: the unit of work of the parallel phase.

Ray-free on purpose: the Ray actor, the Tune trial and the serial benchmark
all call ``train_subdomain`` with the same arguments, so they do the same work.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch

from ddray.decomposition import Subdomain
from ddray.models import count_parameters, create_model
from ddray.training.loop import Callback, OptimizerSettings, evaluate, fit, predict_proba, select_device

SPLITS = ("train", "val", "test")


@dataclass
class LocalSettings:
    """Everything a local training needs besides the data (picklable, small)."""

    model: str
    width: float
    epochs: int
    batch_size: int
    lr: float
    optimizer: str = "adam"
    weight_decay: float = 0.0
    momentum: float = 0.9
    num_classes: int = 2
    in_channels: int = 1
    spatial_dims: int = 2
    seed: int = 0
    use_gpu: bool = False

    @classmethod
    def from_config(cls, config, *, num_classes: int, in_channels: int, overrides: Mapping | None = None) -> "LocalSettings":
        """From a RunConfig plus optional Tune-sampled overrides (lr, batch_size, width, ...)."""
        t = config.training
        values = dict(
            model=config.local_model.name,
            width=config.local_model.width,
            epochs=t.epochs,
            batch_size=t.batch_size,
            lr=t.lr,
            optimizer=t.optimizer,
            weight_decay=t.weight_decay,
            momentum=t.momentum,
            num_classes=num_classes,
            in_channels=in_channels,
            spatial_dims=config.spatial_dims,
            seed=config.seed,
            use_gpu=config.resources.gpus_per_subdomain > 0,
        )
        values.update(overrides or {})
        return cls(**values)

    def optimizer_settings(self) -> OptimizerSettings:
        return OptimizerSettings(self.optimizer, self.lr, self.weight_decay, self.momentum)


@dataclass
class LocalResult:
    subdomain: int
    probabilities: dict[str, np.ndarray]  # split -> (n, K) float32
    val_accuracy: float
    test_accuracy: float
    history: list[dict[str, float]]
    best_epoch: int
    parameters: int
    train_seconds: float
    resumed_from_epoch: int = 0
    data_fingerprint: str = ""
    settings: dict = field(default_factory=dict)
    subdomain_spec: dict = field(default_factory=dict)
    model_state: dict | None = None  # selected weights on CPU; the driver writes them where it keeps runs

    def summary(self) -> dict:
        """JSON-safe view for results.json (no arrays)."""
        return {
            "subdomain": self.subdomain,
            "test_accuracy": self.test_accuracy,
            "validation_accuracy": self.val_accuracy,
            "best_epoch": self.best_epoch,
            "epochs_run": len(self.history),
            "parameters": self.parameters,
            "train_seconds": round(self.train_seconds, 3),
            "resumed_from_epoch": self.resumed_from_epoch,
        }


def subdomain_tensors(arrays: Mapping[str, np.ndarray], sub: Subdomain) -> dict[str, torch.Tensor]:
    """The subdomain's pixels of every split as contiguous tensors (one copy of 1/N of the data)."""
    out = {}
    for split in SPLITS:
        out[f"x_{split}"] = torch.from_numpy(np.array(sub.extract(arrays[f"x_{split}"]), dtype=np.float32, order="C"))
        out[f"y_{split}"] = torch.from_numpy(np.array(arrays[f"y_{split}"], dtype=np.int64))
    return out


def fingerprint(x: torch.Tensor) -> str:
    """Short hash of a tensor's bytes: lets tests prove a trial trained on its own subdomain."""
    return hashlib.sha1(x.numpy().tobytes()).hexdigest()[:16]


def build_local_model(settings: LocalSettings) -> torch.nn.Module:
    return create_model(
        settings.model,
        in_channels=settings.in_channels,
        num_classes=settings.num_classes,
        spatial_dims=settings.spatial_dims,
        width=settings.width,
    )


def train_subdomain(
    sub: Subdomain,
    arrays: Mapping[str, np.ndarray],
    settings: LocalSettings,
    *,
    checkpoint_path: str | Path | None = None,
    model_path: str | Path | None = None,
    callbacks: Sequence[Callback] = (),
) -> LocalResult:
    """Train the local CNN of ``sub`` and return its class probabilities on every split.

    ``checkpoint_path`` holds the resumable training state; ``model_path`` gets
    the selected weights (the checkpoint users and ``ddray predict`` load).
    """
    started = time.perf_counter()
    torch.manual_seed(settings.seed * 1009 + sub.index)
    data = subdomain_tensors(arrays, sub)
    model = build_local_model(settings)
    device = select_device(settings.use_gpu)
    outcome = fit(
        model,
        data["x_train"],
        data["y_train"],
        data["x_val"],
        data["y_val"],
        epochs=settings.epochs,
        batch_size=settings.batch_size,
        optimizer=settings.optimizer_settings(),
        seed=settings.seed * 1009 + sub.index,
        device=device,
        callbacks=callbacks,
        checkpoint_path=checkpoint_path,
    )
    probabilities = {split: predict_proba(model, data[f"x_{split}"]) for split in SPLITS}
    _, test_acc = evaluate(model, data["x_test"], data["y_test"])
    result = LocalResult(
        subdomain=sub.index,
        probabilities=probabilities,
        val_accuracy=outcome.best_val_accuracy,
        test_accuracy=test_acc,
        history=outcome.history,
        best_epoch=outcome.best_epoch,
        parameters=count_parameters(model),
        train_seconds=time.perf_counter() - started,
        resumed_from_epoch=outcome.resumed_from_epoch,
        data_fingerprint=fingerprint(data["x_train"]),
        settings=asdict(settings),
        subdomain_spec=asdict(sub),
        model_state={k: v.detach().cpu() for k, v in model.state_dict().items()},
    )
    if model_path is not None:
        save_local_model(model_path, result)
    return result


def save_local_model(path: str | Path, result: LocalResult) -> None:
    """The file ``ddray predict`` and transfer learning load: weights, settings, subdomain."""
    if result.model_state is None:
        raise ValueError(f"subdomain {result.subdomain}: no model weights to save")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": result.model_state, "settings": result.settings, "subdomain": result.subdomain_spec}, path)
