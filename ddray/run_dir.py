"""The layout of a run's output folder, in one place.

::

    RUN/config.yaml             the validated config of the run
    RUN/preprocessing.json      how raw inputs were resized/normalised (for predict)
    RUN/subdomains.json         the decomposition: bounds of every subdomain
    RUN/progress.json           live snapshot (phase, per-subdomain epoch/metrics)
    RUN/timings.json            local phase wall time so far (a resumed run adds to it)
    RUN/results.json            final results
    RUN/results.md, results.csv, accuracy.png
    RUN/checkpoints/local/subNNN.pt   selected weights of each local CNN
    RUN/checkpoints/dnn.pt            the coarse DNN
    RUN/local/subNNN.npz        local probabilities of a finished subdomain (resume skips it)
    STATE/subNNN.ckpt           resumable per-epoch training state (STATE = RUN/state,
                                or under ``storage`` when configured for multi-node)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from ddray.config import RunConfig, load_config
from ddray.storage import is_uri, join


class RunDirError(RuntimeError):
    """The output folder cannot be used as asked (would overwrite, or is not a run)."""


@dataclass(frozen=True)
class RunDir:
    root: Path
    storage: str | None = None  # folder or URI every node reaches (multi-node); None = inside root

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def preprocessing(self) -> Path:
        return self.root / "preprocessing.json"

    @property
    def subdomains(self) -> Path:
        return self.root / "subdomains.json"

    @property
    def progress(self) -> Path:
        return self.root / "progress.json"

    @property
    def timings(self) -> Path:
        return self.root / "timings.json"

    @property
    def results(self) -> Path:
        return self.root / "results.json"

    @property
    def local_models(self) -> Path:
        return self.root / "checkpoints" / "local"

    @property
    def dnn(self) -> Path:
        return self.root / "checkpoints" / "dnn.pt"

    @property
    def local_results(self) -> Path:
        return self.root / "local"

    @property
    def state(self) -> str:
        return join(self.storage, "state") if self.storage else str(self.root / "state")

    def local_model(self, index: int) -> Path:
        return self.local_models / f"sub{index:03d}.pt"

    def local_result(self, index: int) -> Path:
        return self.local_results / f"sub{index:03d}.npz"

    def state_file(self, index: int) -> str:
        return join(self.state, f"sub{index:03d}.ckpt")

    def create(self) -> None:
        for folder in (self.root, self.local_models, self.local_results):
            folder.mkdir(parents=True, exist_ok=True)
        if not is_uri(self.state):
            Path(self.state).mkdir(parents=True, exist_ok=True)

    def write_config(self, config: RunConfig) -> None:
        self.config.write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))

    def read_config(self) -> RunConfig:
        if not self.config.exists():
            raise RunDirError(f"{self.root} is not a ddray run folder (no config.yaml)")
        return load_config(self.config)

    def read_results(self) -> dict:
        if not self.results.exists():
            raise RunDirError(f"{self.root} has no results.json: the run did not finish")
        return json.loads(self.results.read_text())


def save_local_result(path: Path, probabilities: dict[str, np.ndarray], summary: dict) -> None:
    """Probabilities of a finished subdomain; written last, so its presence means 'done'."""
    tmp = path.with_name(path.stem + ".tmp.npz")
    np.savez(tmp, summary=np.array(json.dumps(summary)), **{f"p_{k}": v for k, v in probabilities.items()})
    tmp.replace(path)


def load_local_result(path: Path) -> tuple[dict[str, np.ndarray], dict]:
    with np.load(path) as data:
        probs = {k[2:]: data[k] for k in data.files if k.startswith("p_")}
        summary = json.loads(str(data["summary"]))
    return probs, summary
