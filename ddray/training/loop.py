"""The one plain-PyTorch training loop every ddray model goes through.

Local CNNs, the DNN, Tune trials and the Ray Train baselines all call ``fit``;
what differs between them (progress display, Tune reporting) are callbacks, so
the loop itself has no ``if tune`` branches. ``fit`` checkpoints after every
epoch when given a path and resumes from it, which is what lets a restarted
Ray actor continue where its predecessor died.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from ddray.storage import atomic_write
from ddray.training.spec import OptimizerSpec


class Callback:
    """Observer of ``fit``; override what you need."""

    def on_epoch_end(self, epoch: int, metrics: dict[str, float], model: nn.Module) -> None:
        """Called after each epoch with 1-based ``epoch`` and that epoch's metrics."""


@dataclass
class FitResult:
    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = 0
    best_val_accuracy: float = 0.0
    resumed_from_epoch: int = 0
    seconds: float = 0.0


def _batches(n: int, batch_size: int, generator: torch.Generator | None) -> list[torch.Tensor]:
    """Index batches; a trailing batch of one joins the previous one (BatchNorm cannot train on one sample)."""
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    batches = list(torch.split(order, batch_size))
    if len(batches) > 1 and len(batches[-1]) == 1:
        batches[-2:] = [torch.cat(batches[-2:])]
    return batches


@torch.no_grad()
def predict_logits(model: nn.Module, x: torch.Tensor, batch_size: int = 512, device: torch.device | None = None) -> torch.Tensor:
    device = device or next(model.parameters()).device
    model.eval()
    outs = [model(x[idx].to(device, non_blocking=True)).float().cpu() for idx in _batches(len(x), batch_size, None)]
    return torch.cat(outs) if outs else torch.empty(0)


def predict_proba(model: nn.Module, x: torch.Tensor | np.ndarray, batch_size: int = 512) -> np.ndarray:
    """Softmax class probabilities as float32 numpy (N, K)."""
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(x))
    return torch.softmax(predict_logits(model, x, batch_size), dim=1).numpy().astype(np.float32)


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 512) -> tuple[float, float]:
    """(mean cross-entropy, accuracy)."""
    if len(x) == 0:
        return float("nan"), float("nan")
    logits = predict_logits(model, x, batch_size)
    loss = nn.functional.cross_entropy(logits, y).item()
    acc = (logits.argmax(1) == y).float().mean().item()
    return loss, acc


def checkpoint_history(path: str | Path) -> list[dict[str, float]]:
    """The per-epoch metrics saved in a ``fit`` checkpoint (what a resumed Tune trial reports as done)."""
    return torch.load(path, map_location="cpu", weights_only=True)["history"]


def fit(
    model: nn.Module,
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    x_val: torch.Tensor,
    y_val: torch.Tensor,
    *,
    epochs: int,
    batch_size: int,
    optimizer: OptimizerSpec,
    seed: int = 0,
    device: torch.device | None = None,
    callbacks: Sequence[Callback] = (),
    checkpoint_path: str | Path | None = None,
    checkpoint_every: int = 1,
    keep_best: bool = True,
) -> FitResult:
    """Train ``model`` in place with cross-entropy; return its history.

    With ``keep_best`` the weights of the epoch with the best validation
    accuracy are restored at the end (model selection on validation, never on
    test). With ``checkpoint_path`` the state is saved every ``checkpoint_every`` epochs and after
    the last one, and, if the file already exists, training resumes from it.
    """
    device = device or torch.device("cpu")
    model.to(device)
    opt = optimizer.make(model.parameters())
    result = FitResult()
    best_state = copy.deepcopy(model.state_dict()) if keep_best else None
    start_epoch = 0
    ckpt = Path(checkpoint_path) if checkpoint_path else None
    if ckpt is not None and ckpt.exists():
        state = torch.load(ckpt, map_location=device, weights_only=True)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        best_state = state["best_state"]
        result.history = state["history"]
        result.best_epoch, result.best_val_accuracy = state["best_epoch"], state["best_val_accuracy"]
        start_epoch = result.resumed_from_epoch = state["epoch"]

    loss_fn = nn.CrossEntropyLoss()
    # on a GPU the training split moves to the device once and batches are cut there: no
    # host-to-device copy per step (a subdomain's share of the data is small); on CPU this is a no-op
    x_train, y_train = x_train.to(device), y_train.to(device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input shapes: let cuDNN pick its fastest kernels once
    started = time.perf_counter()
    for epoch in range(start_epoch + 1, epochs + 1):
        t0 = time.perf_counter()
        model.train()
        generator = torch.Generator().manual_seed(seed * 100_003 + epoch)  # same batches after a resume
        total, count = torch.zeros((), device=device), 0
        for idx in _batches(len(x_train), batch_size, generator):
            idx = idx.to(device)
            xb, yb = x_train[idx], y_train[idx]
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(xb), yb)
            loss.backward()
            opt.step()
            total += loss.detach() * len(idx)  # summed on the device: no sync per step
            count += len(idx)
        val_loss, val_acc = evaluate(model, x_val, y_val)
        metrics = {
            "epoch": epoch,
            "train_loss": total.item() / max(count, 1),
            "val_loss": val_loss,
            "val_accuracy": val_acc,
            "epoch_seconds": time.perf_counter() - t0,
        }
        result.history.append(metrics)
        if not keep_best or val_acc > result.best_val_accuracy or result.best_epoch == 0:
            result.best_epoch, result.best_val_accuracy = epoch, val_acc
            if keep_best:
                best_state = copy.deepcopy(model.state_dict())
        if ckpt is not None and (epoch % checkpoint_every == 0 or epoch == epochs):
            state = {
                "model": model.state_dict(),
                "optimizer": opt.state_dict(),
                "best_state": best_state,
                "history": result.history,
                "best_epoch": result.best_epoch,
                "best_val_accuracy": result.best_val_accuracy,
                "epoch": epoch,
            }
            atomic_write(ckpt, lambda tmp: torch.save(state, tmp))
        for cb in callbacks:
            cb.on_epoch_end(epoch, metrics, model)
    if keep_best and best_state is not None:
        model.load_state_dict(best_state)
    result.seconds = time.perf_counter() - started
    return result
