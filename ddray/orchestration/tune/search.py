"""Running one search: build or restore the Tune experiment, run it, finalise every subdomain.

Resume: the experiment lives at ``RUN/tune/search`` (with storage: ``<run prefix>/tune/search``,
resolved by :meth:`ddray.run_dir.RunDir.location`). ``Tuner.restore(..., resume_unfinished=True,
resume_errored=True)`` continues unfinished trials from their last checkpoint; trials of subdomains
that were already finished return at once without training. An interrupted search (Ctrl-C /
SIGUSR1, which Tune turns into a graceful stop that saves its state) raises
:class:`SearchInterrupted`.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import ray
from ray import tune

from ddray.config import RunConfig
from ddray.errors import SubdomainFailed
from ddray.orchestration.tune.monitor import MonitorCallback, SearchMonitor, monitoring
from ddray.orchestration.tune.scheduler import PerSubdomainScheduler
from ddray.orchestration.tune.searcher import OPTUNA_WINDOW, SubdomainSearcher
from ddray.orchestration.tune.selection import BEST_FILE, TrialRecord, per_subdomain_counts, read_best, trial_row
from ddray.orchestration.tune.space import max_epochs, metric_keys, search_space, trials_per_subdomain
from ddray.orchestration.tune.trial import make_trainable
from ddray.run_dir import RunDir
from ddray.storage import write_json
from ddray.training.local import LocalResult

if TYPE_CHECKING:
    from ddray.orchestration.local_phase import LocalTask

EXPERIMENT = "search"
TRIALS_FILE = "trials.json"  # every trial of every session (results.json tune.trials)
ALLOCATION_FILE = "allocation.json"  # adaptive: the experiment's budget, kept for a restored search
# One search at a time per driver process: Tune's trainable registry is process-global and not
# thread-safe (ray-project/ray#30091). Separate processes (the REST service's jobs) are separate drivers.
_ONE_SEARCH = threading.Lock()


class SearchInterrupted(KeyboardInterrupt):
    """The search was stopped before every trial ended; its state is saved for --resume."""


def run_search(
    config: RunConfig,
    run_dir: RunDir,
    tasks: list[LocalTask],
    data_ref: ray.ObjectRef,
    *,
    slots: int,
    on_event: Callable[[dict], None],
    on_result: Callable[[LocalResult, dict], None],
) -> dict[str, Any]:
    """Search every task's subdomain; call ``on_result`` with each subdomain's best trial; return results['tune']."""
    tune_cfg = config.tune
    if tune_cfg is None:
        raise ValueError("run_search needs a tune: section in the config")
    out_dir = run_dir.tune
    out_dir.mkdir(parents=True, exist_ok=True)
    experiment_path = f"{run_dir.location('tune')}/{EXPERIMENT}"
    metric, _, mode = metric_keys(tune_cfg)
    best = read_best(out_dir / BEST_FILE)  # subdomains finished in earlier sessions
    started = time.perf_counter()
    restored, concurrency, monitor = False, 0, None
    if tasks:
        with _ONE_SEARCH:
            restored, concurrency, monitor = _search(config, run_dir, tasks, data_ref, slots, on_event, on_result, best)
    counts: dict[str, int] = {}
    for records in (monitor.records.values() if monitor else []):
        for r in records:
            counts[r.status] = counts.get(r.status, 0) + 1
    rows = _trial_rows(out_dir, monitor)
    n = config.decomposition.num_subdomains
    budget = _budget(out_dir, trials_per_subdomain(tune_cfg) * n)
    return {
        "best": [best[i] for i in sorted(best)],
        "metric": metric,
        "mode": mode,
        "search_alg": tune_cfg.search_alg,
        "scheduler": tune_cfg.scheduler,
        "num_samples": tune_cfg.num_samples,
        "allocation": tune_cfg.allocation,
        "min_trials_per_subdomain": tune_cfg.min_trials_per_subdomain if tune_cfg.allocation == "adaptive" else None,
        "budget": budget,
        "rounds": max((r["round"] for r in rows), default=-1) + 1,
        "unspent": max(0, budget - len(rows)) if tune_cfg.allocation == "adaptive" else 0,
        "trials_per_subdomain": per_subdomain_counts(rows, n),
        "max_concurrent_trials": concurrency,
        "trials": rows,
        "trial_status": counts,
        "failed_trials": monitor.failures if monitor else [],
        "experiment_path": experiment_path,
        "restored": restored,
        "wall_s": round(time.perf_counter() - started, 3),
    }


def _search(
    config: RunConfig,
    run_dir: RunDir,
    tasks: list[LocalTask],
    data_ref: ray.ObjectRef,
    slots: int,
    on_event: Callable[[dict], None],
    on_result: Callable[[LocalResult, dict], None],
    best: dict[int, dict],
) -> tuple[bool, int, SearchMonitor]:
    """Build or restore the experiment, run it, finalise every subdomain; (restored, concurrency, monitor)."""
    tune_cfg, res = config.tune, config.resources
    out_dir = run_dir.tune
    storage = run_dir.location("tune")
    experiment_path = f"{storage}/{EXPERIMENT}"
    metric, selection_metric, mode = metric_keys(tune_cfg)
    per_subdomain = trials_per_subdomain(tune_cfg)
    # frequent snapshots are intended (see num_to_keep below); do not warn about them on every epoch
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    total = per_subdomain * len(tasks)
    concurrency = max(1, min(tune_cfg.max_concurrent_trials or slots, total))
    trainable = make_trainable(tasks, data_ref, res.cpus_per_subdomain, res.gpus_per_subdomain)
    restored = tune.Tuner.can_restore(experiment_path)
    if restored:
        tuner = tune.Tuner.restore(experiment_path, trainable=trainable, resume_unfinished=True, resume_errored=True)
    else:
        common = dict(
            num_samples=tune_cfg.num_samples,
            algorithm=tune_cfg.search_alg,
            metric=selection_metric,
            mode=mode,
            seed=config.seed,
            window=tune_cfg.max_concurrent_trials or OPTUNA_WINDOW,  # not the cluster's slots: same W everywhere
        )
        indices, space = [t.sub.index for t in tasks], search_space(tune_cfg)
        if tune_cfg.allocation == "adaptive":
            from ddray.orchestration.tune.adaptive import AdaptiveSearcher

            chance, n_val = _chance(data_ref)
            searcher = AdaptiveSearcher(indices, space, min_trials=tune_cfg.min_trials_per_subdomain, chance=chance, n_val=n_val, **common)
            write_json(out_dir / ALLOCATION_FILE, {"budget": total, "chance": chance, "n_val": n_val, "subdomains": indices})
        else:
            searcher = SubdomainSearcher(indices, space, **common)
        scheduler = None
        if tune_cfg.scheduler == "asha":
            scheduler = PerSubdomainScheduler(
                metric=metric, mode=mode, max_t=max_epochs(tune_cfg, tasks[0].spec.epochs), grace_period=tune_cfg.grace_period
            )
        tuner = tune.Tuner(
            trainable,
            param_space={},
            tune_config=tune.TuneConfig(
                search_alg=searcher,
                scheduler=scheduler,
                num_samples=total,
                max_concurrent_trials=concurrency,
                reuse_actors=True,
            ),
            run_config=tune.RunConfig(
                name=EXPERIMENT,
                storage_path=storage,
                callbacks=[MonitorCallback()],
                failure_config=tune.FailureConfig(max_failures=res.max_retries),
                # two per trial: Tune then snapshots its state every second trial checkpoint,
                # so a resume redoes at most one epoch and never points at a deleted checkpoint
                checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
                verbose=0,
            ),
        )
    monitor = SearchMonitor(
        tasks={t.sub.index: t for t in tasks},
        per_subdomain=per_subdomain,
        selection_metric=selection_metric,
        mode=mode,
        asha=tune_cfg.scheduler == "asha",
        out_dir=out_dir,
        on_event=on_event,
        on_result=on_result,
        best=best,
        budget=_budget(out_dir, total) if tune_cfg.allocation == "adaptive" else None,
    )
    with monitoring(monitor):
        grid = tuner.fit()
    _finish(monitor, grid, out_dir, experiment_path)
    return restored, concurrency, monitor


def _finish(monitor: SearchMonitor, grid, out_dir: Path, experiment_path: str) -> None:
    """After ``fit``: stop on interruption, finalise what the callback could not, raise on failures."""
    try:
        grid.get_dataframe().to_csv(out_dir / "trials.csv", index=False)
    except Exception:  # an empty or partly restored grid has no frame; the per-subdomain CSVs remain
        pass
    stopped = monitor.interrupted()
    if stopped:
        raise SearchInterrupted(
            f"the Tune search was interrupted with {len(stopped)} trial(s) unfinished; its state is saved in "
            f"{experiment_path}. Continue with: ddray run --resume {out_dir.parent}"
        )
    for index in sorted(monitor.tasks):
        if index not in monitor.finalised:
            mine = [t for t in monitor.trials if int(t.config.get("subdomain", -1)) == index]
            monitor.finalise(index, [TrialRecord.from_trial(t) for t in mine])
    if monitor.errors:
        raise SubdomainFailed(" | ".join(monitor.errors))


def _chance(data_ref: ray.ObjectRef) -> tuple[float, int]:
    """(majority-class rate of the validation labels, validation samples): what 'at chance' means here."""
    import numpy as np

    y_val = np.asarray(ray.get(data_ref)["y_val"])
    if y_val.size == 0:
        return 0.0, 1
    return float(np.bincount(y_val).max() / y_val.size), int(y_val.size)


def _budget(out_dir: Path, default: int) -> int:
    """The adaptive experiment's budget as first planned (a restored search has fewer tasks than it started with)."""
    path = out_dir / ALLOCATION_FILE
    if path.exists():
        return int(json.loads(path.read_text())["budget"])
    return default


def _trial_rows(out_dir: Path, monitor: SearchMonitor | None) -> list[dict[str, Any]]:
    """Every trial of the search, of this session and earlier ones (``RUN/tune/trials.json``), by subdomain, round
    and config: an order that never depends on timing (which trial Tune starts first does), so that two runs with
    the same seed list the same trials the same way."""
    path = out_dir / TRIALS_FILE
    rows = {r["trial_id"]: r for r in (json.loads(path.read_text()) if path.exists() else [])}
    statuses = {r.trial_id: r.status for records in (monitor.records.values() if monitor else []) for r in records}
    for t in (monitor.trials if monitor else []):
        record = TrialRecord.from_trial(t)
        if record.metrics.get("skipped"):
            continue
        record.status = statuses.get(record.trial_id, "")
        rows[record.trial_id] = trial_row(record)
    out = sorted(rows.values(), key=lambda r: (r["subdomain"], r["round"], json.dumps(r["config"], sort_keys=True), r["trial_id"]))
    write_json(path, out)
    return out
