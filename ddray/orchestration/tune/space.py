"""The search space of a run's ``tune:`` section: Tune samplers, trial counts, the metric keys.

Sampled values become :class:`~ddray.training.spec.TrainingSpec` overrides through
:func:`coerce_overrides` (the only place that knows which fields a trial may change).
"""

from __future__ import annotations

import math
from typing import Any, Mapping

from ray import tune

from ddray.config import TuneConfig

INT_PARAMS = ("batch_size", "epochs")
FLOAT_PARAMS = ("lr", "weight_decay", "width")


def search_space(tune_cfg: TuneConfig) -> dict[str, Any]:
    """The ``tune.space`` entries as Tune samplers."""
    space: dict[str, Any] = {}
    for name, entry in tune_cfg.space.items():
        if entry.choice is not None:
            space[name] = tune.choice(list(entry.choice))
        elif entry.uniform is not None:
            space[name] = tune.uniform(*entry.uniform)
        elif entry.loguniform is not None:
            space[name] = tune.loguniform(*entry.loguniform)
        else:
            space[name] = tune.grid_search(list(entry.grid))
    return space


def grid_size(tune_cfg: TuneConfig) -> int:
    return math.prod(len(e.grid) for e in tune_cfg.space.values() if e.grid is not None)


def trials_per_subdomain(tune_cfg: TuneConfig) -> int:
    """Every grid point is tried ``num_samples`` times, as in Tune's own random search."""
    return tune_cfg.num_samples * grid_size(tune_cfg)


def max_epochs(tune_cfg: TuneConfig, default: int) -> int:
    entry = tune_cfg.space.get("epochs")
    if entry is None:
        return default
    values = entry.choice or entry.grid or entry.uniform or entry.loguniform or [default]
    return max(1, int(round(max(float(v) for v in values))))


def coerce_overrides(config: Mapping[str, Any]) -> dict[str, Any]:
    """Sampled values -> :meth:`TrainingSpec.with_overrides` keys (batch size and epochs as ints; the spec validates)."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        if key in INT_PARAMS:
            out[key] = max(1, int(round(float(value))))
        elif key in FLOAT_PARAMS:
            out[key] = float(value)
        elif key == "optimizer":
            out[key] = str(value)
    return out


def metric_keys(tune_cfg: TuneConfig) -> tuple[str, str, str]:
    """(per-epoch metric for ASHA, selected-epoch metric for search and selection, mode)."""
    mode = "max" if tune_cfg.metric == "val_accuracy" else "min"
    return tune_cfg.metric, f"selected_{tune_cfg.metric}", mode
