"""The one plain-PyTorch training loop every ddray model goes through.

Local CNNs, the DNN, Tune trials and the Ray Train baselines all call ``fit``;
what differs between them (progress display, Tune reporting) are callbacks, so
the loop itself has no ``if tune`` branches. ``fit`` checkpoints after every
epoch when given a path and resumes from it, which is what lets a restarted
Ray actor continue where its predecessor died. A training recipe (lr schedule,
augmentation, precision, early stopping: :class:`~ddray.training.spec.RecipeSpec`)
is carried out by :mod:`ddray.training.recipe`; its state is part of the checkpoint.
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
from ddray.training.recipe import augment_batch, autocast, check_recipe, grad_scaler, make_scheduler, memory_layout
from ddray.training.spec import OptimizerSpec, RecipeSpec

AUGMENT_STREAM = 0x5EED_A116  # keeps the augmentation draws apart from the batch order's


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


def epochs_without_improvement(history: Sequence[dict[str, float]]) -> int:
    """Epochs since the best validation accuracy (first epoch, then strictly better: ``keep_best``'s rule)."""
    best_epoch, best = 0, float("nan")
    for m in history:
        if best_epoch == 0 or m["val_accuracy"] > best:
            best_epoch, best = int(m["epoch"]), m["val_accuracy"]
    return int(history[-1]["epoch"]) - best_epoch if history else 0


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
    recipe: RecipeSpec | None = None,
) -> FitResult:
    """Train ``model`` in place with cross-entropy; return its history.

    With ``keep_best`` the weights of the epoch with the best validation
    accuracy are restored at the end (model selection on validation, never on
    test). With ``checkpoint_path`` the state is saved every ``checkpoint_every`` epochs and after
    the last one, and, if the file already exists, training resumes from it. ``recipe`` (default:
    constant lr, no augmentation, float32, no early stopping) is checked against the input and the
    device before anything trains. Early stopping ends the run after the epoch that makes
    ``early_stopping_patience`` epochs without improvement; the history holds the epochs run.
    """
    device = device or torch.device("cpu")
    recipe = recipe or RecipeSpec()
    check_recipe(recipe, device, x_train, x_val)
    patience = recipe.early_stopping_patience
    layout = memory_layout(recipe, x_train)
    model.to(device, memory_format=layout or torch.preserve_format)
    opt = optimizer.make(model.parameters())
    scheduler = make_scheduler(recipe, opt, epochs)
    scaler = grad_scaler(recipe, device)
    result = FitResult()
    best_state = copy.deepcopy(model.state_dict()) if keep_best else None
    start_epoch = 0
    ckpt = Path(checkpoint_path) if checkpoint_path else None
    if ckpt is not None and ckpt.exists():
        state = torch.load(ckpt, map_location=device, weights_only=True)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        for part, name in ((scheduler, "scheduler"), (scaler, "scaler")):
            if part is not None and name in state:  # a checkpoint of a run with the same recipe
                part.load_state_dict(state[name])
        best_state = state["best_state"]
        result.history = state["history"]
        result.best_epoch, result.best_val_accuracy = state["best_epoch"], state["best_val_accuracy"]
        start_epoch = result.resumed_from_epoch = state["epoch"]

    loss_fn = nn.CrossEntropyLoss()
    # on a GPU the training split moves to the device once and batches are cut there: no
    # host-to-device copy per step (a subdomain's share of the data is small); on CPU this is a no-op
    x_train, y_train = x_train.to(device), y_train.to(device)
    if layout is not None:  # once, not per batch: index batches keep the layout (a 1-channel tensor is already both)
        x_train, x_val = x_train.contiguous(memory_format=layout), x_val.contiguous(memory_format=layout)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input shapes: let cuDNN pick its fastest kernels once
    started = time.perf_counter()
    stopped = patience is not None and epochs_without_improvement(result.history) >= patience  # a resumed, finished run
    for epoch in range(start_epoch + 1, epochs + 1):
        if stopped:
            break
        t0 = time.perf_counter()
        model.train()
        generator = torch.Generator().manual_seed(seed * 100_003 + epoch)  # same batches after a resume
        # a stream of its own: batch order is the same with and without augmentation
        augment_rng = torch.Generator().manual_seed(seed * 100_003 + epoch + AUGMENT_STREAM) if recipe.augment.enabled else None
        lr = opt.param_groups[0]["lr"]  # what this epoch trains with; the schedule steps after it
        total, count = torch.zeros((), device=device), 0
        for idx in _batches(len(x_train), batch_size, generator):
            idx = idx.to(device)
            xb, yb = x_train[idx], y_train[idx]
            if augment_rng is not None:
                xb = augment_batch(xb, recipe.augment, augment_rng)
                if layout is not None:
                    xb = xb.contiguous(memory_format=layout)
            opt.zero_grad(set_to_none=True)
            with autocast(recipe, device):
                loss = loss_fn(model(xb), yb)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
            else:
                loss.backward()
                opt.step()
            total += loss.detach().float() * len(idx)  # summed on the device: no sync per step
            count += len(idx)
        if scheduler is not None:
            scheduler.step()
        val_loss, val_acc = evaluate(model, x_val, y_val)  # float32: autocast covers the training steps only
        metrics = {
            "epoch": epoch,
            "train_loss": total.item() / max(count, 1),
            "val_loss": val_loss,
            "val_accuracy": val_acc,
            "lr": lr,
            "epoch_seconds": time.perf_counter() - t0,
        }
        result.history.append(metrics)
        if not keep_best or val_acc > result.best_val_accuracy or result.best_epoch == 0:
            result.best_epoch, result.best_val_accuracy = epoch, val_acc
            if keep_best:
                best_state = copy.deepcopy(model.state_dict())
        stopped = patience is not None and epochs_without_improvement(result.history) >= patience
        if ckpt is not None and (epoch % checkpoint_every == 0 or epoch == epochs or stopped):
            state = {
                "model": model.state_dict(),
                "optimizer": opt.state_dict(),
                "best_state": best_state,
                "history": result.history,
                "best_epoch": result.best_epoch,
                "best_val_accuracy": result.best_val_accuracy,
                "epoch": epoch,
                **({"scheduler": scheduler.state_dict()} if scheduler is not None else {}),
                **({"scaler": scaler.state_dict()} if scaler is not None else {}),
            }
            atomic_write(ckpt, lambda tmp: torch.save(state, tmp))
        for cb in callbacks:
            cb.on_epoch_end(epoch, metrics, model)
    if keep_best and best_state is not None:
        model.load_state_dict(best_state)
    result.seconds = time.perf_counter() - started
    return result
