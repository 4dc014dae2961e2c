"""Training one subdomain's local CNN: the unit of work of the parallel phase.

Ray-free on purpose: the Ray actor, the Tune trial and the serial benchmark
all call ``train_subdomain`` with the same arguments, so they do the same work.
"""

from __future__ import annotations

import hashlib
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch

from ddray.decomposition import Subdomain
from ddray.models import count_parameters
from ddray.training.loop import Callback, evaluate, fit, predict_proba
from ddray.training.spec import TrainingSpec

SPLITS = ("train", "val", "test")


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
    spec: dict = field(default_factory=dict)  # TrainingSpec.to_dict() of what was trained
    subdomain_spec: dict = field(default_factory=dict)
    model_state: dict | None = None  # selected weights on CPU; the driver writes them where it keeps runs
    device: str = "cpu"  # where it trained: "cpu", "cuda:0", ...

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
            "device": self.device,
        }


class CudaUnavailable(RuntimeError):
    """``resources.require_cuda`` is set but the worker sees no CUDA device."""


def cpu_threads(cpus: float) -> int:
    """Torch threads for a CPU share: its whole CPUs, at least one (0.5 CPU -> 1, 2.5 CPU -> 2)."""
    return max(1, math.floor(cpus + 1e-9))


def warm_up() -> None:
    """One tiny forward, backward and optimizer step, so torch's lazy imports happen now.

    The first ``optimizer.step()`` of a process imports ``torch._dynamo`` and friends (about a
    second here). A worker that does this while it starts, and it starts while the driver loads
    the data, keeps that second out of its first subdomain's training.
    """
    model = torch.nn.Conv2d(1, 1, 1)
    opt = torch.optim.Adam(model.parameters())
    model(torch.zeros(1, 1, 2, 2)).sum().backward()
    opt.step()


def cuda_diagnosis() -> str:
    """Why CUDA is not usable here, in one line (names CUDA_VISIBLE_DEVICES and torch's CUDA build)."""
    built = f"torch {torch.__version__} built for CUDA {torch.version.cuda}" if torch.version.cuda else f"torch {torch.__version__} is a CPU-only build"
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    return f"torch.cuda.is_available() is False (CUDA_VISIBLE_DEVICES={visible if visible is not None else 'unset'}, {built})"


def training_device(spec: TrainingSpec, subdomain: int) -> torch.device:
    """The device a subdomain trains on: CUDA when it asked for a GPU and one is visible, else CPU.

    A GPU request without a usable CUDA device (a logical Ray GPU on a CPU
    machine, a driver too old for torch's CUDA build, a CPU-only torch) falls
    back to CPU with a warning on stderr, which Ray forwards to the job log; with
    ``require_cuda`` it raises ``CudaUnavailable`` instead, before any training.
    """
    if not spec.device.use_gpu:
        return torch.device("cpu")
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    asked = f"subdomain {subdomain}: asked for {spec.device.gpus:g} GPU but {cuda_diagnosis()}"
    if spec.device.require_cuda:
        raise CudaUnavailable(
            f"{asked}; resources.require_cuda is true, so it does not train on CPU. Fix: run on nodes whose NVIDIA "
            f"driver supports torch's CUDA build (torch 2.14.1 wheels are CUDA 13.0 builds: driver >= 580; "
            f"see docs/deploy.md), install a CUDA build of torch there, or set resources.require_cuda: false to "
            f"allow the CPU fallback"
        )
    print(f"[ddray] WARNING {asked}; training on CPU with {torch.get_num_threads()} threads", file=sys.stderr, flush=True)
    return torch.device("cpu")


def subdomain_arrays(arrays: Mapping[str, np.ndarray], sub: Subdomain) -> dict[str, np.ndarray]:
    """Only the subdomain's pixels of every split (C-contiguous copies) and the labels: what its worker needs."""
    out = {}
    for split in SPLITS:
        out[f"x_{split}"] = np.ascontiguousarray(sub.extract(arrays[f"x_{split}"]), dtype=np.float32)
        out[f"y_{split}"] = np.asarray(arrays[f"y_{split}"], dtype=np.int64)
    return out


def subdomain_tensors(arrays: Mapping[str, np.ndarray], sub: Subdomain) -> dict[str, torch.Tensor]:
    """The subdomain's pixels of every split as writable tensors (one copy of 1/N of the data).

    ``arrays`` is the whole data set, or already only this subdomain's (:func:`subdomain_arrays`):
    arrays whose spatial shape is the subdomain's are not cut again (for a subdomain that covers
    the whole image both readings are the same).
    """
    out = {}
    for split in SPLITS:
        x = arrays[f"x_{split}"]
        if tuple(x.shape[2:]) != sub.shape:
            x = sub.extract(x)
        out[f"x_{split}"] = torch.from_numpy(np.array(x, dtype=np.float32, order="C"))
        out[f"y_{split}"] = torch.from_numpy(np.array(arrays[f"y_{split}"], dtype=np.int64))
    return out


def fingerprint(x: torch.Tensor) -> str:
    """Short hash of a tensor's bytes: lets tests prove a trial trained on its own subdomain."""
    return hashlib.sha1(x.numpy().tobytes()).hexdigest()[:16]


def train_subdomain(
    sub: Subdomain,
    arrays: Mapping[str, np.ndarray],
    spec: TrainingSpec,
    *,
    checkpoint_path: str | Path | None = None,
    callbacks: Sequence[Callback] = (),
) -> LocalResult:
    """Train the local CNN of ``sub`` and return its class probabilities on every split.

    ``checkpoint_path`` holds the resumable training state. The selected weights come back in
    ``model_state``; the caller saves them where it keeps runs (:meth:`ddray.run_dir.RunDir.save_local_model`).
    """
    device = training_device(spec, sub.index)  # before any work: require_cuda fails here
    started = time.perf_counter()
    seed = spec.seed * 1009 + sub.index
    torch.manual_seed(seed)
    data = subdomain_tensors(arrays, sub)
    model = spec.model.build()
    outcome = fit(
        model,
        data["x_train"],
        data["y_train"],
        data["x_val"],
        data["y_val"],
        epochs=spec.epochs,
        batch_size=spec.batch_size,
        optimizer=spec.optimizer,
        seed=seed,
        device=device,
        callbacks=callbacks,
        checkpoint_path=checkpoint_path,
        checkpoint_every=spec.checkpoint_every,
        recipe=spec.recipe,
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
        spec=spec.to_dict(),
        subdomain_spec=asdict(sub),
        model_state={k: v.detach().cpu() for k, v in model.state_dict().items()},
        device=str(device),
    )
    return result
