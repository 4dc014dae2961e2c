"""The driver side of a search: progress, per-subdomain finalisation, interruption.

:class:`SearchMonitor`, fed by the stateless :class:`MonitorCallback`, forwards per-epoch progress
and finalises a subdomain as soon as all of its trials have ended: best trial by the validation
metric at each trial's selected epoch (never test, :mod:`.selection`), its weights and
probabilities to the caller's ``on_result`` (the driver saves them in the run folder, which marks
the subdomain finished for ``--resume``), its trials to ``RUN/tune/subNNN_trials.csv`` and its config
to ``RUN/tune/best_configs.json``. A subdomain without any finished trial is a
:class:`~ddray.errors.SubdomainFailed` naming it; the other subdomains go on.

The callback is pickled into the experiment and must keep working after ``Tuner.restore``, so it
holds no state: it finds the monitor of the search running in its thread (Tune runs its loop in
the caller's thread) through :func:`monitoring`.
"""

from __future__ import annotations

import json
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

import numpy as np
from ray import tune

from ddray.errors import SubdomainFailed
from ddray.run_dir import read_model
from ddray.orchestration.tune.selection import BEST_FILE, TrialRecord, classify, select_best, write_best, write_trials_csv
from ddray.orchestration.tune.trial import MODEL_FILE, PROBS_FILE, RESULT_FILE
from ddray.training.local import LocalResult

if TYPE_CHECKING:
    from ddray.orchestration.local_phase import LocalTask


@dataclass
class SearchMonitor:
    """Driver-side bookkeeping of one search: progress, per-subdomain finalisation, interruption."""

    tasks: dict[int, LocalTask]
    per_subdomain: int
    selection_metric: str
    mode: str
    asha: bool
    out_dir: Path
    on_event: Callable[[dict], None]
    on_result: Callable[[LocalResult, dict], None]
    best: dict[int, dict]
    budget: int | None = None  # adaptive allocation: the experiment's trial budget (per_subdomain is then unused)
    finalised: set[int] = field(default_factory=set)  # attempted, whether it succeeded or raised
    ended: set[str] = field(default_factory=set)
    ended_before: set[str] | None = None
    trials: list = field(default_factory=list)
    records: dict[int, list[TrialRecord]] = field(default_factory=dict)
    failures: list[dict] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    # -- callback entry points -------------------------------------------
    def see(self, trials: list) -> None:
        self.trials = trials
        if self.ended_before is None:
            self.ended_before = {t.trial_id for t in trials if t.status in ("TERMINATED", "ERROR")}

    def trial_result(self, trial, result: dict) -> None:
        if result.get("skipped") or "epoch" not in result:
            return
        index = int(trial.config["subdomain"])
        self.on_event(
            {
                "subdomain": index,
                "epoch": int(result["epoch"]),
                "epochs": int(result.get("epochs", 0)),
                "train_loss": result.get("train_loss"),
                "val_accuracy": result.get("val_accuracy"),
                "status": "running",
                "trial": trial.trial_id,
                "trials_done": self._ended_count(index),
            }
        )

    def trial_ended(self, trials: list, trial) -> None:
        self.see(trials)
        self.ended.add(trial.trial_id)
        index = int(trial.config.get("subdomain", -1))
        if index in self.tasks and index not in self.finalised:
            mine = [t for t in trials if int(t.config.get("subdomain", -1)) == index]
            # uniform: the subdomain has all its trials; adaptive: the whole budget is handed out, so no more can come
            complete = len(trials) >= self.budget if self.budget is not None else len(mine) >= self.per_subdomain
            if complete and all(self._has_ended(t, current=trial) for t in mine):
                self.finalise(index, [TrialRecord.from_trial(t) for t in mine])

    # -- helpers -----------------------------------------------------------
    def _has_ended(self, t, current=None) -> bool:
        return t is current or t.trial_id in self.ended or t.trial_id in (self.ended_before or set())

    def _ended_count(self, index: int) -> int:
        return sum(1 for t in self.trials if int(t.config.get("subdomain", -1)) == index and self._has_ended(t))

    def interrupted(self) -> list:
        """Trials that neither ended in this session nor before it: stopped by an interruption."""
        return [t for t in self.trials if not self._has_ended(t) and not (t.last_result or {}).get("skipped")]

    def finalise(self, index: int, records: list[TrialRecord]) -> None:
        """Pick the subdomain's best trial, install its artifacts, and report it as finished."""
        self.finalised.add(index)
        try:
            self._finalise(index, records)
        except Exception as err:  # raised after fit: a failing subdomain must not stop the others
            self.errors.append(str(err))
            self.on_event({"subdomain": index, "status": "failed", "error": str(err)})

    def _finalise(self, index: int, records: list[TrialRecord]) -> None:
        classify(records, self.selection_metric, self.asha)
        self.records[index] = records
        for r in records:
            if r.status == "failed":
                self.failures.append({"subdomain": index, "trial_id": r.trial_id, "error": r.error})
        best = select_best(records, self.selection_metric, self.mode)
        write_trials_csv(self.out_dir / f"sub{index:03d}_trials.csv", records, best)
        if best is None:
            causes = "; ".join(f"{r.trial_id}: {r.error or r.status}" for r in records) or "no trial ran"
            raise SubdomainFailed(
                f"subdomain {index}: none of its {len(records)} Tune trials finished ({causes}). "
                f"Finished subdomains are kept; rerun with --resume to continue."
            )
        with best.checkpoint.as_directory() as d:
            d = Path(d)
            state = read_model(d / MODEL_FILE, what=f"best trial {best.trial_id} of subdomain {index}")["state_dict"]
            with np.load(d / PROBS_FILE) as npz:
                probabilities = {k: npz[k] for k in npz.files}
            summary = json.loads((d / RESULT_FILE).read_text())
        result = LocalResult(probabilities=probabilities, model_state=state, **summary)  # on_result saves it
        entry = {
            "subdomain": index,
            "config": best.config,
            "validation_accuracy": float(best.metrics["selected_val_accuracy"]),
            "validation_loss": float(best.metrics["selected_val_loss"]),
            "trial_id": best.trial_id,
            "trials": len(records),
        }
        self.best[index] = entry
        write_best(self.out_dir / BEST_FILE, self.best, self.selection_metric)
        where = {"node_id": best.metrics.get("node_id"), "trial_id": best.trial_id, "tune_config": best.config}
        self.on_result(result, where)
        self.on_event({"subdomain": index, "status": "done", "test_accuracy": result.test_accuracy, "trial": best.trial_id,
                       "trials_done": len(records), "trials_failed": sum(r.status == "failed" for r in records)})


_ACTIVE = threading.local()


@contextmanager
def monitoring(monitor: SearchMonitor) -> Iterator[None]:
    """The monitor of the search running in this thread (Tune runs its loop in the caller's thread)."""
    previous = getattr(_ACTIVE, "monitor", None)
    _ACTIVE.monitor = monitor
    try:
        yield
    finally:
        _ACTIVE.monitor = previous


class MonitorCallback(tune.Callback):
    """Stateless, so it pickles into the experiment and still works after ``Tuner.restore``."""

    @staticmethod
    def _monitor() -> SearchMonitor | None:
        return getattr(_ACTIVE, "monitor", None)

    def on_step_begin(self, iteration, trials, **info):
        if (m := self._monitor()) is not None:
            m.see(trials)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if (m := self._monitor()) is not None:
            m.trial_result(trial, result)

    def on_trial_complete(self, iteration, trials, trial, **info):
        if (m := self._monitor()) is not None:
            m.trial_ended(trials, trial)

    def on_trial_error(self, iteration, trials, trial, **info):
        if (m := self._monitor()) is not None:
            m.trial_ended(trials, trial)

    def on_experiment_end(self, trials, **info):
        if (m := self._monitor()) is not None:
            m.see(trials)
