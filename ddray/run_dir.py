"""The layout of a run's output folder, in one place.

::

    RUN/run.json                {"run_id": ..., "storage": <the run's prefix or null>}, fixed at creation
    RUN/config.yaml             the validated config of the run
    RUN/preprocessing.json      how raw inputs were resized/normalised (for predict)
    RUN/subdomains.json         the decomposition: bounds of every subdomain
    RUN/progress.json           live snapshot (phase, per-subdomain epoch/metrics)
    RUN/timings.json            local phase wall time so far (a resumed run adds to it)
    RUN/stream.json             the streamed DNN's refits so far (aggregation.streaming; a resumed run continues it)
    RUN/results.json            final results
    RUN/results.md, results.csv, accuracy.png, learning_curves.png, confusion_matrix.png, subdomain_accuracy.png
    RUN/tensorboard/            per-epoch TensorBoard event files of every model (ddray.tracking, docs/tracking.md)
    RUN/tracking.json           every model's per-epoch history and the MLflow run id (ddray.tracking)
    RUN/checkpoints/local/subNNN.pt   selected weights of each local CNN, with its TrainingSpec and subdomain
    RUN/checkpoints/dnn.pt            the coarse DNN, with its DNNSpec
    RUN/checkpoints/multilevel.pt     the regional DNNs and the global DNN of aggregation.levels, with their DNNSpecs
    RUN/checkpoints/baselines/NAME.pt a comparison model (global, coherent, transfer), with its BaselineJob
    RUN/baselines/NAME.json     a finished comparison model's summary and history (resume skips it)
    RUN/local/subNNN.npz        local probabilities of a finished subdomain (resume skips it)
    RUN/tune/                   per-subdomain trials, best configs (a Tune search)
    STATE/subNNN.ckpt           resumable per-epoch training state

Every file here is written by this module (atomically, see
:func:`ddray.storage.atomic_write`) and read back by it; the model files are
plain ``torch.save`` dicts of tensors and builtins, loaded with
``weights_only=True``. torch is imported only when a model file is touched,
so the REST service can use the layout without it.

With a storage base (``storage:`` or ``$DDRAY_STORAGE``) every run owns the
prefix ``<base>/<run_id>``: STATE is ``<prefix>/state``, the Tune and Train
experiments are under ``<prefix>/tune`` and ``<prefix>/baselines``, and the
whole run folder is copied to ``<prefix>/`` when the run ends (also when it
fails or is cancelled). A fresh run refuses a prefix that holds anything; a
resumed run takes its prefix from ``run.json`` and checks that
``<prefix>/run.json`` names the same run id. Without a base, all of it stays
in RUN (STATE = RUN/state).
"""

from __future__ import annotations

import json
import re
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np
import yaml

from ddray import storage as store
from ddray.config import RunConfig, load_config
from ddray.storage import atomic_write, is_uri, join

if TYPE_CHECKING:
    from ddray.training.spec import DNNSpec, TrainingSpec

RUN_FILE = "run.json"
RUN_ID_MAX = 64
_RUN_ID = re.compile(r"[A-Za-z0-9._-]{1,%d}" % RUN_ID_MAX)


class RunDirError(RuntimeError):
    """The output folder cannot be used as asked (would overwrite, or is not a run)."""


def check_run_id(run_id: str) -> str:
    """``run_id`` if valid (1..64 of A-Z a-z 0-9 . _ -, not '.' or '..'); else RunDirError saying how to fix it."""
    if not isinstance(run_id, str) or not _RUN_ID.fullmatch(run_id) or run_id in (".", ".."):
        raise RunDirError(
            f"invalid run id {run_id!r}: use 1 to {RUN_ID_MAX} characters from A-Z a-z 0-9 . _ - "
            f"(not '.' or '..'), e.g. --run-id digits-01"
        )
    return run_id


def new_run_id(name: str) -> str:
    """``<name>-<UTC yyyymmddTHHMMSS>-<6 random hex>``; ``name`` (the output folder's) is made safe and short."""
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    suffix = f"-{stamp}-{secrets.token_hex(3)}"
    safe = re.sub(r"[^A-Za-z0-9._-]+", "-", name)[: RUN_ID_MAX - len(suffix)].strip("-") or "run"
    return check_run_id(safe + suffix)


def _storage_error(prefix: str, err: BaseException) -> RunDirError:
    return RunDirError(
        f"cannot use the run's storage prefix {prefix}: {err}; check storage: / DDRAY_STORAGE, "
        f"that the bucket or folder exists, and the credentials (AWS_*, GOOGLE_APPLICATION_CREDENTIALS)"
    )


@dataclass(frozen=True)
class RunDir:
    root: Path
    storage: str | None = None  # this run's prefix <storage base>/<run_id> (every node reaches it); None = inside root
    run_id: str | None = None

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
    def stream(self) -> Path:
        return self.root / "stream.json"

    @property
    def local_models(self) -> Path:
        return self.root / "checkpoints" / "local"

    @property
    def dnn(self) -> Path:
        return self.root / "checkpoints" / "dnn.pt"

    @property
    def multilevel(self) -> Path:
        return self.root / "checkpoints" / "multilevel.pt"

    @property
    def local_results(self) -> Path:
        return self.root / "local"

    @property
    def baseline_models(self) -> Path:
        return self.root / "checkpoints" / "baselines"

    @property
    def baseline_summaries(self) -> Path:
        return self.root / "baselines"

    @property
    def tune(self) -> Path:
        return self.root / "tune"

    @property
    def tensorboard(self) -> Path:
        return self.root / "tensorboard"

    @property
    def tracking(self) -> Path:
        return self.root / "tracking.json"

    @property
    def run_file(self) -> Path:
        return self.root / RUN_FILE

    def location(self, leaf: str) -> str:
        """``<prefix>/<leaf>``, or ``root/<leaf>`` without storage: per-epoch state, Tune and Train experiments."""
        return join(self.storage, leaf) if self.storage else str(self.root / leaf)

    @property
    def state(self) -> str:
        return self.location("state")

    def local_model(self, index: int) -> Path:
        return self.local_models / f"sub{index:03d}.pt"

    def local_result(self, index: int) -> Path:
        return self.local_results / f"sub{index:03d}.npz"

    def state_file(self, index: int) -> str:
        return join(self.state, f"sub{index:03d}.ckpt")

    def baseline_model(self, name: str) -> Path:
        return self.baseline_models / f"{name}.pt"

    def baseline_summary(self, name: str) -> Path:
        return self.baseline_summaries / f"{name}.json"

    # ------------------------------------------------------------ models and results

    def save_local_model(self, index: int, state_dict: Mapping[str, Any], spec: Mapping[str, Any], subdomain: Mapping[str, Any]) -> None:
        """The file ``ddray predict`` and transfer learning load: weights, ``TrainingSpec.to_dict()``, subdomain."""
        write_model(self.local_model(index), state_dict, spec=dict(spec), subdomain=dict(subdomain))

    def load_local_model(self, index: int) -> tuple[dict, "TrainingSpec"]:
        """(weights, TrainingSpec) of subdomain ``index``'s local CNN; RunDirError if it is missing."""
        from ddray.training.spec import TrainingSpec

        saved = read_model(self.local_model(index), what=f"local model of subdomain {index}")
        return saved["state_dict"], TrainingSpec.from_dict(saved.get("spec") or saved["settings"])  # "settings": ddray 0.1

    def save_dnn(self, state_dict: Mapping[str, Any], spec: "DNNSpec") -> None:
        write_model(self.dnn, state_dict, spec=spec.to_dict())

    def load_dnn(self) -> tuple[dict, "DNNSpec"]:
        from ddray.training.spec import DNNSpec

        saved = read_model(self.dnn, what="coarse DNN")
        return saved["state_dict"], DNNSpec.from_dict(saved.get("spec") or saved)  # flat fields: ddray 0.1

    def save_multilevel(self, saved: Mapping[str, Any]) -> None:
        """``Multilevel.saved()``: grid, levels and every coarse model (level, region, inputs, spec, state_dict)."""
        write_model(self.multilevel, {}, **saved)

    def load_multilevel(self) -> dict:
        return read_model(self.multilevel, what="multilevel coarse net")

    def save_local_result(self, index: int, probabilities: Mapping[str, np.ndarray], summary: dict) -> None:
        """Probabilities of a finished subdomain; written last, so its presence means 'done'."""
        arrays = {f"p_{k}": v for k, v in probabilities.items()}
        atomic_write(self.local_result(index), lambda tmp: np.savez(tmp, summary=np.array(json.dumps(summary)), **arrays))

    def load_local_result(self, index: int) -> tuple[dict[str, np.ndarray], dict]:
        with np.load(self.local_result(index)) as data:
            probs = {k[2:]: data[k] for k in data.files if k.startswith("p_")}
            summary = json.loads(str(data["summary"]))
        return probs, summary

    # ------------------------------------------------------------ identity and storage

    @classmethod
    def fresh(cls, root: str | Path, base: str | None, run_id: str | None = None) -> "RunDir":
        """A new run in ``root`` (absolute) with prefix ``<base>/<run_id>``; checks only, writes nothing.

        RunDirError when ``root`` already holds a run, the run id is invalid, or the prefix holds anything.
        """
        root = Path(root).resolve()  # absolute: Ray Train/Tune need it
        if (root / "config.yaml").exists():
            raise RunDirError(
                f"{root} already holds a ddray run; nothing was changed. Continue it with --resume, or choose another --output"
            )
        run_id = check_run_id(run_id) if run_id is not None else new_run_id(root.name)
        run_dir = cls(root, store.run_prefix(base, run_id), run_id)
        run_dir.check_prefix_free()
        return run_dir

    @classmethod
    def existing(cls, root: str | Path, run_id: str | None = None) -> "RunDir":
        """The run in ``root`` with the run id and prefix recorded in its run.json (for --resume).

        RunDirError when ``root`` is not a run, ``run_id`` differs from the recorded one, or the
        prefix's run.json does not name this run.
        """
        root = Path(root).resolve()
        info = read_run_info(root)
        if run_id is not None and run_id != info["run_id"]:
            raise RunDirError(
                f"cannot resume {root} as run {run_id!r}: it is run {info['run_id']!r} (see {root / RUN_FILE}); "
                f"drop --run-id or give its own"
            )
        run_dir = cls(root, info.get("storage"), info["run_id"])
        run_dir.check_prefix_owned()
        return run_dir

    def check_prefix_free(self) -> None:
        """RunDirError unless this run's prefix is empty (a fresh run never shares or adopts storage)."""
        if not self.storage:
            return
        try:
            empty = store.is_empty(self.storage)
        except (OSError, ValueError) as err:
            raise _storage_error(self.storage, err) from None
        if not empty:
            raise RunDirError(
                f"the storage prefix {self.storage} already holds files (another run's, or an earlier run "
                f"with run id {self.run_id!r}); nothing was changed. Use another run id (--run-id), or continue "
                f"that run with ddray run --resume RUN_DIR"
            )

    def check_prefix_owned(self) -> None:
        """RunDirError unless ``<prefix>/run.json`` exists and names this run (resume never adopts another run's state)."""
        if not self.storage:
            return
        where = join(self.storage, RUN_FILE)
        try:
            recorded = json.loads(store.read_bytes(where)) if store.exists(where) else None
        except (OSError, ValueError) as err:
            raise _storage_error(self.storage, err) from None
        if recorded is None:
            raise RunDirError(
                f"cannot resume run {self.run_id!r}: {where} is missing, so its storage prefix is not this run's; "
                f"start a new run instead (ddray run CONFIG --output NEW_DIR)"
            )
        if recorded.get("run_id") != self.run_id:
            raise RunDirError(
                f"cannot resume run {self.run_id!r}: its storage prefix {self.storage} belongs to run "
                f"{recorded.get('run_id')!r} ({where}); start a new run instead (ddray run CONFIG --output NEW_DIR)"
            )

    def run_info(self) -> dict:
        return {"run_id": self.run_id, "storage": self.storage}

    def claim(self, config: RunConfig) -> None:
        """Create a fresh run: its prefix first (run.json and config.yaml, so it is taken at once), then the folder."""
        config_text = yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
        info_text = json.dumps(self.run_info(), indent=1)
        if self.storage:
            self.check_prefix_free()  # again: time has passed since the first check
            try:
                store.write_bytes(join(self.storage, RUN_FILE), info_text.encode())
                store.write_bytes(join(self.storage, "config.yaml"), config_text.encode())
            except (OSError, ValueError) as err:
                raise _storage_error(self.storage, err) from None
        self.create()
        self.config.write_text(config_text)
        self.run_file.write_text(info_text)

    def save_to_storage(self) -> int:
        """Copy the whole run folder to ``<prefix>/`` (unchanged files are skipped); the number of files copied."""
        if not self.storage:
            return 0
        return store.upload_tree(self.root, self.storage)

    def create(self) -> None:
        for folder in (self.root, self.local_models, self.local_results):
            folder.mkdir(parents=True, exist_ok=True)
        if not is_uri(self.state):
            Path(self.state).mkdir(parents=True, exist_ok=True)

    def read_config(self) -> RunConfig:
        if not self.config.exists():
            raise RunDirError(f"{self.root} is not a ddray run folder (no config.yaml)")
        return load_config(self.config)

    def read_results(self) -> dict:
        if not self.results.exists():
            raise RunDirError(f"{self.root} has no results.json: the run did not finish")
        return json.loads(self.results.read_text())


def read_run_info(root: str | Path) -> dict:
    """The run.json of a run folder: {"run_id": ..., "storage": prefix or None}; RunDirError if missing or broken."""
    root = Path(root)
    path = root / RUN_FILE
    if not path.exists():
        if (root / "config.yaml").exists():
            raise RunDirError(
                f"{root} has no {RUN_FILE} (made by an older ddray), so its run id and storage are unknown; "
                f"start a new run instead (ddray run {root / 'config.yaml'} --output NEW_DIR)"
            )
        raise RunDirError(f"{root} is not a ddray run folder (no {RUN_FILE} or config.yaml)")
    try:
        info = json.loads(path.read_text())
        check_run_id(info["run_id"])
    except (ValueError, KeyError, TypeError, RunDirError) as err:
        raise RunDirError(f"{path} is damaged ({err}); it must hold {{\"run_id\": ..., \"storage\": ...}}") from None
    return {"run_id": info["run_id"], "storage": info.get("storage")}


def write_model(path: str | Path, state_dict: Mapping[str, Any], **meta: Any) -> None:
    """A model file: ``{"state_dict": ..., **meta}`` (tensors and builtins only), written atomically."""
    import torch

    payload = {"state_dict": {k: v.detach().cpu() for k, v in state_dict.items()}, **meta}
    atomic_write(path, lambda tmp: torch.save(payload, tmp))


def read_model(path: str | Path, what: str = "model") -> dict:
    """A model file written by :func:`write_model` (or by ddray 0.1), loaded on CPU with ``weights_only=True``."""
    import torch

    path = Path(path)
    if not path.exists():
        raise RunDirError(f"missing {what} checkpoint {path}; the run is incomplete")
    return torch.load(path, map_location="cpu", weights_only=True)
