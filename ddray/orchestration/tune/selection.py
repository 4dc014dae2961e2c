"""Which trials count and which one wins: pure bookkeeping over trial records (no Ray import).

- Failures: a trial that errors, or ends without ever reporting the metric, is a failed trial and
  never a candidate. Trials stopped by ASHA are not candidates either (their run was cut short).
  Trials of subdomains finished in an earlier session report ``skipped`` and are ignored.
- Selection is by the validation metric at each trial's selected epoch (never test); ties go to the
  other validation metric (accuracy ties: lower loss), then to the first trial id.
- Each subdomain's trials go to ``RUN/tune/subNNN_trials.csv`` and the winners' configs to
  ``RUN/tune/best_configs.json`` (rewritten atomically as subdomains finish).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from ddray.storage import write_json

BEST_FILE = "best_configs.json"
TRIAL_COLUMNS = ("epoch", "selected_epoch", "selected_val_accuracy", "selected_val_loss", "val_accuracy",
                 "val_loss", "train_loss", "fingerprint", "resumed_from_epoch", "time_total_s")


@dataclass
class TrialRecord:
    trial_id: str
    subdomain: int
    config: dict
    metrics: dict
    checkpoint: Any  # tune.Checkpoint | None
    error: str | None
    status: str = ""  # completed | stopped | failed | skipped (set by classify)
    round: int = 0  # allocation round (adaptive; always 0 with uniform allocation)

    @classmethod
    def from_trial(cls, trial: Any) -> "TrialRecord":
        """From anything shaped like a ``ray.tune.experiment.Trial`` (trial_id, status, config,
        last_result, checkpoint, error_file)."""
        error = None
        if trial.status == "ERROR":
            error = _trial_error(trial)
        return cls(
            trial_id=trial.trial_id,
            subdomain=int(trial.config.get("subdomain", -1)),
            config={k: v for k, v in trial.config.items() if k not in ("subdomain", "round")},
            metrics=dict(trial.last_result or {}),
            checkpoint=trial.checkpoint,
            error=error,
            round=int(trial.config.get("round", 0)),
        )


def _trial_error(trial: Any) -> str:
    path = getattr(trial, "error_file", None)
    try:
        if path and os.path.exists(path):
            lines = Path(path).read_text().strip().splitlines()
            return " ".join(line.strip() for line in lines[-3:])[-400:]
    except OSError:
        pass
    return "trial raised an error (see the Tune trial folder)"


def finite(value: Any) -> bool:
    """A number that is neither missing, NaN nor infinite."""
    try:
        return value is not None and math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def classify(records: Sequence[TrialRecord], selection_metric: str, asha: bool) -> None:
    """Set each record's status; 'never reported the metric' is a failure, not a success."""
    for r in records:
        if r.metrics.get("skipped"):
            r.status = "skipped"
        elif r.error is not None:
            r.status = "failed"
        elif not finite(r.metrics.get(selection_metric)):
            r.status, r.error = "failed", "the trial ended without reporting a validation metric"
        elif r.metrics.get("final") and r.checkpoint is not None:
            r.status = "completed"
        elif asha:
            r.status = "stopped"
        else:
            r.status, r.error = "failed", "the trial ended before its final report"


def select_best(records: Sequence[TrialRecord], selection_metric: str, mode: str) -> TrialRecord | None:
    """Best completed trial by its validation metric at its selected epoch.

    Ties go to the other validation metric (accuracy ties: lower loss), then to the first trial id.
    """
    candidates = [r for r in records if r.status == "completed"]
    if not candidates:
        return None
    sign = 1.0 if mode == "max" else -1.0
    other, other_sign = ("selected_val_loss", -1.0) if selection_metric == "selected_val_accuracy" else ("selected_val_accuracy", 1.0)

    def key(r: TrialRecord) -> tuple:
        value = r.metrics.get(other)
        tie = -other_sign * float(value) if finite(value) else float("inf")  # a missing tie-breaker loses the tie
        return (-sign * float(r.metrics[selection_metric]), tie, r.trial_id)

    return sorted(candidates, key=key)[0]


def write_trials_csv(path: Path, records: Sequence[TrialRecord], best: TrialRecord | None) -> None:
    from ddray.report import write_csv

    rows = []
    for r in records:
        row = {"trial_id": r.trial_id, "subdomain": r.subdomain, "status": r.status, "chosen": best is not None and r is best}
        row.update({f"config/{k}": v for k, v in r.config.items()})
        row.update({k: r.metrics.get(k) for k in TRIAL_COLUMNS})
        row["error"] = r.error
        rows.append(row)
    write_csv(rows, path)


def read_best(path: Path) -> dict[int, dict]:
    if not path.exists():
        return {}
    return {int(e["subdomain"]): e for e in json.loads(path.read_text()).get("best", [])}


def write_best(path: Path, best: Mapping[int, dict], metric: str) -> None:
    write_json(path, {"metric": metric, "best": [best[i] for i in sorted(best)]})


def trial_row(r: TrialRecord) -> dict[str, Any]:
    """One trial as results.json ``tune.trials`` lists it (validation accuracy at its selected epoch; None if it never reported)."""
    acc, seconds = r.metrics.get("selected_val_accuracy"), r.metrics.get("time_total_s")
    return {
        "trial_id": r.trial_id,
        "subdomain": r.subdomain,
        "round": r.round,
        "config": r.config,
        "validation_accuracy": float(acc) if finite(acc) else None,
        "seconds": round(float(seconds), 3) if finite(seconds) else None,
        "status": r.status or ("failed" if r.error else "completed" if r.metrics.get("final") else "stopped"),
    }


def per_subdomain_counts(rows: Sequence[Mapping[str, Any]], subdomains: int) -> list[int]:
    """Trials of each subdomain 0..subdomains-1."""
    counts = [0] * subdomains
    for row in rows:
        if 0 <= int(row["subdomain"]) < subdomains:
            counts[int(row["subdomain"])] += 1
    return counts
