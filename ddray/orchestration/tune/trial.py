"""The trial side, run on Tune's actors: train one subdomain with sampled hyperparameters.

- Every trial trains one local CNN with :func:`~ddray.training.local.train_subdomain` on its own
  actor with the subdomain's resources (``resources.cpus_per_subdomain`` / ``gpus_per_subdomain``).
- Data: the driver's object-store reference goes through ``tune.with_parameters`` (kept as a
  reference, not copied); each trial slices its own subdomain and reports the fingerprint of the
  pixels it trained on with every result, which is what the isolation test checks.
- Every epoch a trial reports its metrics plus a checkpoint (the loop's resumable state). Its last
  report carries the finished artifacts (``MODEL_FILE``, ``PROBS_FILE``, ``RESULT_FILE``): selected
  weights, class probabilities on every split and the training summary, so the driver never
  recomputes anything.
- Resume: a restored trial continues from its checkpoint's ``STATE_FILE``; trials of subdomains
  that were already finished report ``skipped`` at once without training.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np
import ray
from ray import tune

from ddray.decomposition import Subdomain
from ddray.orchestration.tune.space import coerce_overrides
from ddray.run_dir import write_model
from ddray.storage import write_json
from ddray.training.local import fingerprint, train_subdomain
from ddray.training.loop import Callback, checkpoint_history
from ddray.training.spec import TrainingSpec

if TYPE_CHECKING:
    from ddray.orchestration.local_phase import LocalTask

STATE_FILE = "state.ckpt"
MODEL_FILE = "model.pt"
PROBS_FILE = "probabilities.npz"
RESULT_FILE = "local.json"


class _TuneReporter(Callback):
    """Reports each epoch to Tune with the resumable state as checkpoint (the last epoch is reported by the trial)."""

    def __init__(self, subdomain: int, epochs: int, data_fingerprint: str, workdir: Path, node_id: str, patience: int | None = None):
        self.subdomain, self.epochs, self.fp, self.workdir, self.node_id = subdomain, epochs, data_fingerprint, workdir, node_id
        self.patience = patience  # the recipe's early stopping: its last epoch goes out with the artifacts too
        self.best_epoch, self.best_acc, self.best_loss = 0, float("nan"), float("nan")
        self.resumed_from_epoch = 0
        self.report_seconds = 0.0  # time spent handing results and checkpoints to Tune

    def track(self, metrics: Mapping[str, float]) -> None:
        """Same rule as ``fit``'s keep_best: first epoch, then strictly better validation accuracy."""
        if self.best_epoch == 0 or metrics["val_accuracy"] > self.best_acc:
            self.best_epoch, self.best_acc, self.best_loss = int(metrics["epoch"]), metrics["val_accuracy"], metrics["val_loss"]

    def is_last(self, epoch: int) -> bool:
        """The trial's last epoch: the planned last one, or the one at which early stopping ends ``fit``
        (its rule: ``patience`` epochs since the best), so that no epoch is reported to Tune twice."""
        return epoch >= self.epochs or (self.patience is not None and epoch - self.best_epoch >= self.patience)

    def metrics(self, m: Mapping[str, float]) -> dict[str, Any]:
        return {
            "subdomain": self.subdomain,
            "epoch": int(m["epoch"]),
            "epochs": self.epochs,
            "train_loss": float(m["train_loss"]),
            "val_loss": float(m["val_loss"]),
            "val_accuracy": float(m["val_accuracy"]),
            "selected_val_accuracy": float(self.best_acc),
            "selected_val_loss": float(self.best_loss),
            "selected_epoch": self.best_epoch,
            "fingerprint": self.fp,
            "node_id": self.node_id,
            "resumed_from_epoch": self.resumed_from_epoch,
        }

    def on_epoch_end(self, epoch: int, metrics: dict[str, float], model: Any) -> None:
        self.track(metrics)
        if not self.is_last(epoch):  # the last epoch goes out with the finished artifacts
            t0 = time.perf_counter()
            tune.report(self.metrics(metrics), checkpoint=tune.Checkpoint.from_directory(str(self.workdir)))
            self.report_seconds += time.perf_counter() - t0


def _skipped_report(subdomain: int) -> dict[str, Any]:
    nan = float("nan")
    return {"subdomain": subdomain, "skipped": 1, "epoch": 0, "val_accuracy": nan, "val_loss": nan,
            "selected_val_accuracy": nan, "selected_val_loss": nan}


def subdomain_trial(
    config: dict,
    *,
    data: Mapping[str, np.ndarray],
    subdomains: Mapping[int, Subdomain],
    base: TrainingSpec,
    cpus: float,
) -> None:
    """One Tune trial: train subdomain ``config['subdomain']`` with the sampled hyperparameters."""
    import logging

    import torch

    for name in ("ray.train", "ray.tune"):  # per-epoch "checkpoint created" lines would flood the driver log
        logging.getLogger(name).setLevel(logging.WARNING)
    index = int(config["subdomain"])
    if index not in subdomains:  # already finished in an earlier session: nothing to train
        tune.report(_skipped_report(index))
        return
    torch.set_num_threads(max(1, int(cpus)))
    sub = subdomains[index]
    spec = base.with_overrides(coerce_overrides(config))
    x_train = np.ascontiguousarray(sub.extract(data["x_train"]), dtype=np.float32)
    data_fp = fingerprint(torch.from_numpy(x_train))
    del x_train
    workdir = Path(tempfile.mkdtemp(prefix=f"ddray-sub{index:03d}-"))
    try:
        state = workdir / STATE_FILE
        node = ray.get_runtime_context().get_node_id()
        reporter = _TuneReporter(index, spec.epochs, data_fp, workdir, node, spec.recipe.early_stopping_patience)
        checkpoint = tune.get_checkpoint()
        if checkpoint is not None:
            with checkpoint.as_directory() as d:
                if (Path(d) / STATE_FILE).exists():
                    shutil.copyfile(Path(d) / STATE_FILE, state)
        if state.exists():
            for m in checkpoint_history(state):
                reporter.track(m)
                reporter.resumed_from_epoch = int(m["epoch"])
        result = train_subdomain(sub, data, spec, checkpoint_path=state, callbacks=[reporter])
        write_model(workdir / MODEL_FILE, result.model_state, spec=result.spec, subdomain=result.subdomain_spec)
        np.savez(workdir / PROBS_FILE, **result.probabilities)
        write_json(workdir / RESULT_FILE, {f.name: getattr(result, f.name) for f in fields(result) if f.name not in ("probabilities", "model_state")})
        final = reporter.metrics(result.history[-1])
        final.update(final=1, train_seconds=float(result.train_seconds), report_seconds=reporter.report_seconds,
                     selected_val_accuracy=float(result.val_accuracy), selected_epoch=result.best_epoch,
                     selected_val_loss=float(result.history[result.best_epoch - 1]["val_loss"]))
        tune.report(final, checkpoint=tune.Checkpoint.from_directory(str(workdir)))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def make_trainable(tasks: Sequence[LocalTask], data_ref: Any, cpus: float, gpus: float):
    """The function trainable with the data reference and the subdomains still to train."""
    if not tasks:
        raise ValueError("no subdomain to search")
    trainable = tune.with_parameters(
        subdomain_trial,
        data=data_ref,
        subdomains={t.sub.index: t.sub for t in tasks},
        base=tasks[0].spec,
        cpus=cpus,
    )
    return tune.with_resources(trainable, {"cpu": cpus, "gpu": gpus})
