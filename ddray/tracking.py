"""Per-epoch metrics of every model of a run: TensorBoard event files in the run folder, and MLflow.

The local CNNs train in Ray actors, possibly on other nodes; their per-epoch history comes back
with each finished subdomain (``LocalResult.history``), so everything here is written by the
driver, as each model finishes, from those histories (see docs/tracking.md)::

    RUN/tensorboard/local/sub000/       one TensorBoard run per model (an event file each)
    RUN/tensorboard/dnn/
    RUN/tensorboard/baselines/global/   (coherent, transfer)
    RUN/tracking.json                   the same histories, and the MLflow run id (a resumed run keeps both)

Scalars per epoch (step = epoch): ``loss/train``, ``loss/val``, ``accuracy/val``,
``time/epoch_seconds``; ``accuracy/test`` once, at the last epoch. With ``MLFLOW_TRACKING_URI``
set, one MLflow run per ddray run (experiment ``$MLFLOW_EXPERIMENT_NAME`` or ``ddray``): the
flattened config as params, ``<model>/<metric>`` per epoch (``local/sub000/val_accuracy``,
``dnn/train_loss``, ``baselines/global/val_loss``), the final ``<model>/test_accuracy`` and
timings, and the pictures and results as artifacts.

Tracking never fails a run: every write happens in one background thread (tensorboard and mlflow
take seconds to import), and a failure is one warning per sink. Nothing is imported before use.
"""

from __future__ import annotations

import json
import logging
import math
import os
import queue
import threading
from importlib.util import find_spec
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from ddray.plots import CONFUSION_PNG, LEARNING_CURVES_PNG, SUBDOMAIN_PNG, confusion_matrix
from ddray.storage import write_json

if TYPE_CHECKING:
    from ddray.config import RunConfig
    from ddray.run_dir import RunDir

log = logging.getLogger(__name__)

TAGS = {"train_loss": "loss/train", "val_loss": "loss/val", "val_accuracy": "accuracy/val", "epoch_seconds": "time/epoch_seconds"}
TEST_TAG = "accuracy/test"
ARTIFACTS = ("results.json", "results.md", "results.csv", "accuracy.png", LEARNING_CURVES_PNG, CONFUSION_PNG, SUBDOMAIN_PNG)
DRAIN_TIMEOUT_S = 120.0  # a finished run waits at most this long for tracking (a slow MLflow server)
CLOSE_TIMEOUT_S = 15.0  # a failed or cancelled run, this long
History = Sequence[Mapping[str, Any]]


def local_name(index: int) -> str:
    """The name of subdomain ``index``'s local CNN in TensorBoard and MLflow: ``local/sub000``."""
    return f"local/sub{index:03d}"


def points(history: History) -> list[tuple[str, float, int]]:
    """(metric, value, epoch) of a ``fit`` history for each metric of :data:`TAGS`; missing or non-finite values skipped."""
    out = []
    for i, metrics in enumerate(history):
        step = int(metrics.get("epoch", i + 1))
        for key in TAGS:
            value = metrics.get(key)
            if value is not None and math.isfinite(float(value)):
                out.append((key, float(value), step))
    return out


def scalars(history: History, test_accuracy: float | None = None) -> list[tuple[str, float, int]]:
    """(TensorBoard tag, value, step) of a history: :func:`points` under their tags, and ``accuracy/test`` at the last epoch."""
    out = [(TAGS[key], value, step) for key, value, step in points(history)]
    if test_accuracy is not None and math.isfinite(float(test_accuracy)):
        last = int(history[-1].get("epoch", len(history))) if history else 0
        out.append((TEST_TAG, float(test_accuracy), last))
    return out


def write_events(folder: Path, history: History, test_accuracy: float | None = None) -> None:
    """One model's whole history as the only event file in ``folder`` (an earlier one, from the
    session a resumed run continues, is replaced, so TensorBoard never shows an epoch twice)."""
    from torch.utils.tensorboard import SummaryWriter  # imports tensorboard: seconds, so only here

    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("events.out.tfevents.*"):
        old.unlink()
    writer = SummaryWriter(log_dir=str(folder))
    try:
        for tag, value, step in scalars(history, test_accuracy):
            writer.add_scalar(tag, value, step)
    finally:
        writer.close()


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """``{"training": {"epochs": 5}}`` -> ``{"training.epochs": "5"}``; lists as JSON (MLflow params are strings)."""
    out: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, name + "."))
        else:
            out[name] = (json.dumps(value) if isinstance(value, (list, tuple)) else str(value))[:500]
    return out


def final_metrics(results: Mapping[str, Any]) -> dict[str, float]:
    """The numbers a finished run ends with: every model's test accuracy, timings, the speed-up."""
    out: dict[str, float] = {}
    local = [e["test_accuracy"] for e in results.get("local", []) if e.get("test_accuracy") is not None]
    for entry in results.get("local", []):
        out[f"{local_name(int(entry['subdomain']))}/test_accuracy"] = entry.get("test_accuracy")
    if local:
        out["local/mean_test_accuracy"] = float(np.mean(local))
    for method, info in (results.get("aggregation") or {}).items():
        if isinstance(info, dict):  # not the stream's list of refits
            out[f"{method}/test_accuracy"] = info.get("test_accuracy")
    for name, info in (results.get("baselines") or {}).items():
        out[f"baselines/{name}/test_accuracy"] = info.get("test_accuracy")
    for key, value in (results.get("timings_s") or {}).items():
        out[f"timings/{key}_s"] = value
    speedup = (results.get("comparison") or {}).get("speedup")
    if speedup is not None:
        out["comparison/speedup"] = speedup
    return {k: float(v) for k, v in out.items() if v is not None and math.isfinite(float(v))}


class MLflowRun:
    """One MLflow run through ``MlflowClient`` (no global "active run" state; safe in a thread)."""

    def __init__(self, client, run_id: str):
        self.client, self.run_id = client, run_id

    @classmethod
    def open(cls, name: str, params: Mapping[str, str], tags: Mapping[str, str], resume_id: str | None = None) -> "MLflowRun":
        """Continue run ``resume_id`` if the tracking server has it, else start one in ``$MLFLOW_EXPERIMENT_NAME`` (or ``ddray``)."""
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        client = MlflowClient()  # MLFLOW_TRACKING_URI
        if resume_id:
            try:
                client.get_run(resume_id)
                client.update_run(resume_id, status="RUNNING")
                return cls(client, resume_id)
            except Exception:  # noqa: BLE001 - gone (another server, deleted): start a new one
                pass
        experiment_name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or "ddray"
        experiment = client.get_experiment_by_name(experiment_name)
        experiment_id = experiment.experiment_id if experiment else client.create_experiment(experiment_name)
        run = cls(client, client.create_run(experiment_id, run_name=name, tags=dict(tags)).info.run_id)
        items = [Param(k, v) for k, v in params.items()]
        for start in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
            client.log_batch(run.run_id, params=items[start : start + 100])
        return run

    def log(self, values: Iterable[tuple[str, float, int]]) -> None:
        """Metrics as (key, value, step)."""
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(key, value, now, step) for key, value, step in values]
        for start in range(0, len(metrics), 1000):  # and at most 1000 metrics
            self.client.log_batch(self.run_id, metrics=metrics[start : start + 1000])

    def log_history(self, name: str, history: History) -> None:
        self.log((f"{name}/{key}", value, step) for key, value, step in points(history))

    def finish(self, metrics: Mapping[str, float], artifacts: Sequence[Path]) -> None:
        self.log((k, v, 0) for k, v in metrics.items())
        for path in artifacts:
            self.client.log_artifact(self.run_id, str(path))
        self.client.set_terminated(self.run_id, "FINISHED")

    def end(self, status: str) -> None:
        self.client.set_terminated(self.run_id, status)


class Tracking:
    """The driver's tracker: call :meth:`local`, :meth:`dnn`, :meth:`baselines` as each model finishes,
    then :meth:`finish` (run done) or :meth:`close` (failed, cancelled). Every call returns at once;
    the writes happen in order in one daemon thread. Read :attr:`histories` and :attr:`confusion` for the plots.
    """

    def __init__(self, run_dir: "RunDir", config: "RunConfig | None" = None):
        self.board = run_dir.tensorboard
        self.record_path = run_dir.tracking
        record = self._read_record()
        restored = record.get("histories") or {}
        self.histories: dict[str, Any] = {
            "local": {int(k): v for k, v in (restored.get("local") or {}).items()},
            "dnn": restored.get("dnn") or [],
            "baselines": dict(restored.get("baselines") or {}),
        }
        self.confusion: np.ndarray | None = None
        self.mlflow: MLflowRun | None = None
        self._recorded = self._snapshot()  # what tracking.json holds (the tracking thread's copy)
        self._mlflow_id: str | None = record.get("mlflow_run_id")
        self._warned: set[str] = set()
        self._jobs: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._work, name="ddray-tracking", daemon=True)
        self._thread.start()
        if os.environ.get("MLFLOW_TRACKING_URI"):
            if find_spec("mlflow") is None:
                self._warn("mlflow", "MLFLOW_TRACKING_URI is set but MLflow is not installed, so this run is not "
                           "logged to MLflow; install it with: pip install ddray[mlflow]")
            else:
                params = flatten(config.model_dump(mode="json")) if config is not None else {}
                tags = {"ddray.run_id": str(run_dir.run_id), "ddray.run_dir": str(run_dir.root), "ddray.storage": str(run_dir.storage or "")}
                name = str(run_dir.run_id or run_dir.root.name)
                self._submit("mlflow", self._open_mlflow, name, params, tags, self._snapshot())

    # ------------------------------------------------------------ what the driver calls

    def local(self, index: int, history: History, test_accuracy: float | None = None) -> None:
        """Subdomain ``index``'s local CNN finished (trained in an actor; its history came back with it)."""
        self.histories["local"][int(index)] = list(history)
        self._model(local_name(int(index)), self.board / "local" / f"sub{int(index):03d}", history, test_accuracy)

    def dnn(self, history: History, predicted: np.ndarray, labels: np.ndarray, num_classes: int, test_accuracy: float | None = None) -> None:
        """The coarse DNN finished; ``predicted`` are its test-set classes (for the confusion matrix)."""
        self.histories["dnn"] = list(history)
        self.confusion = confusion_matrix(predicted, labels, num_classes)
        self._model("dnn", self.board / "dnn", history, test_accuracy)

    def baselines(self, summaries: Mapping[str, Path]) -> None:
        """Finished comparison models, from their summaries (``RUN/baselines/<name>.json``, history included)."""
        for name, path in summaries.items():
            try:
                info = json.loads(Path(path).read_text())
            except (OSError, ValueError) as err:
                self._warn("baselines", f"cannot read the history of baseline {name} ({err})")
                continue
            self.histories["baselines"][name] = list(info.get("history") or [])
            self._model(f"baselines/{name}", self.board / "baselines" / name, info.get("history") or [], info.get("test_accuracy"))

    def finish(self, results: Mapping[str, Any], out_dir: Path) -> None:
        """The run is done and its pictures are drawn: final metrics and artifacts to MLflow; waits for every write."""
        artifacts = [out_dir / name for name in ARTIFACTS if (out_dir / name).exists()]
        self._submit("mlflow", lambda: self.mlflow and self.mlflow.finish(final_metrics(results), artifacts))
        self._drain(DRAIN_TIMEOUT_S)

    def close(self, status: str = "FAILED") -> None:
        """The run failed (``FAILED``) or was cancelled (``KILLED``): end the MLflow run so; waits for every write."""
        self._submit("mlflow", lambda: self.mlflow and self.mlflow.end(status))
        self._drain(CLOSE_TIMEOUT_S)

    # ------------------------------------------------------------ in the tracking thread

    def _model(self, name: str, folder: Path, history: History, test_accuracy: float | None) -> None:
        history = list(history)
        self._submit("tensorboard", write_events, folder, history, test_accuracy)
        self._submit("tracking.json", self._write_record, self._snapshot())
        self._submit("mlflow", lambda: self.mlflow and self.mlflow.log_history(name, history))

    def _snapshot(self) -> dict[str, Any]:
        """A JSON-safe copy of :attr:`histories` for the tracking thread (the driver goes on adding to the original)."""
        return {"local": {str(k): v for k, v in sorted(self.histories["local"].items())}, "dnn": self.histories["dnn"],
                "baselines": dict(self.histories["baselines"])}

    def _open_mlflow(self, name: str, params: Mapping[str, str], tags: Mapping[str, str], earlier: Mapping[str, Any]) -> None:
        self.mlflow = MLflowRun.open(name, params, tags, resume_id=self._mlflow_id)
        if self.mlflow.run_id != self._mlflow_id:  # a new MLflow run: it gets what earlier sessions recorded too
            self._mlflow_id = self.mlflow.run_id
            for index, history in earlier["local"].items():
                self.mlflow.log_history(local_name(int(index)), history)
            self.mlflow.log_history("dnn", earlier["dnn"])
            for baseline, history in earlier["baselines"].items():
                self.mlflow.log_history(f"baselines/{baseline}", history)
        self._write_record(self._recorded)

    def _read_record(self) -> dict:
        try:
            return json.loads(self.record_path.read_text()) if self.record_path.exists() else {}
        except (OSError, ValueError) as err:
            log.warning("ddray tracking: ignoring unreadable %s (%s)", self.record_path, err)
            return {}

    def _write_record(self, histories: Mapping[str, Any]) -> None:
        self._recorded = histories
        write_json(self.record_path, {"mlflow_run_id": self._mlflow_id, "histories": histories})

    def _submit(self, sink: str, fn: Callable, *args: Any) -> None:
        self._jobs.put((sink, fn, args))

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:  # finished or closed: the thread ends
                return
            sink, fn, args = job
            try:
                fn(*args)
            except Exception as err:  # noqa: BLE001 - tracking never fails a run
                self._warn(sink, f"{type(err).__name__}: {str(err)[:600]}")
            finally:
                self._jobs.task_done()

    def _drain(self, timeout: float) -> None:
        """Wait for every write so far (at most ``timeout`` s), then let the thread end; later calls do nothing."""
        done = threading.Event()
        self._submit("tracking", done.set)
        self._jobs.put(None)
        self._submit = lambda *job: None  # type: ignore[method-assign]
        if not done.wait(timeout):
            self._warn("timeout", f"tracking still busy after {timeout:.0f} s (a slow MLflow server?); the run goes on without it")

    def _warn(self, sink: str, message: str) -> None:
        if sink in self._warned:
            return
        self._warned.add(sink)
        hint = " (later failures of the same kind are not repeated)" if sink in ("tensorboard", "mlflow", "tracking.json") else ""
        log.warning("ddray tracking: %s: %s%s; the run goes on", sink, message, hint)
