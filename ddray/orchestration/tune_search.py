"""Per-subdomain hyperparameter search with Ray Tune.

Design
------
- One Tune experiment holds the trials of every subdomain; the subdomain
  index is part of each trial's config, and every trial trains one local CNN
  with :func:`~ddray.training.local.train_subdomain` on its own actor with the
  subdomain's resources (``resources.cpus_per_subdomain`` /
  ``gpus_per_subdomain``).

  Why one experiment rather than one per subdomain: Tune reuses trial actors
  (``reuse_actors=True``) only within an experiment. With one experiment the
  cluster starts one trial process per slot for the whole search; with one
  experiment per subdomain it starts them again for every subdomain, each
  paying process start-up and ``import torch`` (about 3-5 s here), which alone
  is more than the 2 s per trial budget when a subdomain has few samples.
  Measured on the 2-core machine, shared with other test runs (8 one-second
  trials importing torch, 2 at a time, ideal 4 s): one experiment 14.8 s and
  15.5 s; four experiments in threads (registered trainables) 26.7 s and
  26.8 s; four in sequence 39.3 s. ``benchmarks/bench_tune_overhead.py``
  measures the whole search against plain trainings. One experiment
  also avoids running several Tune experiments in one driver at all
  (officially unsupported; threads have crashed in ``tune/registry.py`` and
  cross-fed parameters, ray-project/ray#30091).

- Subdomains never mix in the search or the pruning:
  :class:`SubdomainSearcher` holds one searcher per subdomain (random: Tune's
  own variant generator over the ``tune:`` space; optuna: one
  ``OptunaSearch`` each, so TPE only learns from its own subdomain), and
  :class:`PerSubdomainScheduler` holds one ``ASHAScheduler`` per subdomain, so
  a trial is only ever stopped for being worse than trials of its own
  subdomain (their losses live on different scales). Trials are suggested
  subdomain by subdomain, so early subdomains finish (and are saved) first.

- Data: the driver's object-store reference goes through
  ``tune.with_parameters`` (kept as a reference, not copied); each trial
  slices its own subdomain and reports the fingerprint of the pixels it
  trained on with every result, which is what the isolation test checks.

- Every epoch a trial reports its metrics plus a checkpoint (the loop's
  resumable state). Its last report carries the finished artifacts: selected
  weights, class probabilities on every split and the training summary, so
  the driver never recomputes anything. ASHA's ``time_attr`` is the epoch.

- The driver side (:class:`_SearchMonitor`, fed by a stateless Tune callback)
  forwards per-epoch progress and finalises a subdomain as soon as all of its
  trials have ended: best trial by the validation metric at each trial's
  selected epoch (never test), its weights to ``RUN/checkpoints/local``, its
  probabilities to the caller's ``on_result`` (which marks the subdomain
  finished for ``--resume``), its trials to ``RUN/tune/subNNN_trials.csv``
  and its config to ``RUN/tune/best_configs.json``.

- Failures: a trial that errors, or ends without ever reporting the metric,
  is a failed trial and never a candidate. Trials stopped by ASHA are not
  candidates either (their run was cut short). A subdomain without any
  finished trial raises :class:`SubdomainFailed` naming it.

- Reproducibility: every subdomain's searcher is seeded from the run's
  ``seed`` and the subdomain index (:func:`subdomain_seed`), so the same
  config and seed suggest the same configurations, and trials train with the
  seeds of plain local trainings. Optuna's TPE learns from finished trials,
  and which ones have finished when it suggests depends on timing ("if two
  trials finish at the same time, the convergence of the search algorithm
  might be influenced by which trial result is processed first", Ray Tune's
  docs on reproducible runs): :class:`_InOrder` makes its k-th suggestion see
  exactly the results of that subdomain's trials 0..k-W (W =
  ``tune.max_concurrent_trials``, default 4). ASHA's pruning still depends on
  the order results arrive, so only ``scheduler: none`` searches are exactly
  reproducible.

- Resume: the experiment lives at ``RUN/tune/search`` (with storage: ``<run prefix>/tune/search``).
  ``Tuner.restore(..., resume_unfinished=True, resume_errored=True)``
  continues unfinished trials from their last checkpoint; trials of
  subdomains that were already finished return at once without training.
  An interrupted search (Ctrl-C / SIGUSR1, which Tune turns into a graceful
  stop that saves its state) raises :class:`SearchInterrupted`.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import shutil
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np
import ray
from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler
from ray.tune.search import Searcher
from ray.tune.search.variant_generator import generate_variants

from ddray.config import RunConfig, TuneConfig
from ddray.decomposition import Subdomain
from ddray.orchestration.local_phase import LocalTask, SubdomainFailed
from ddray.orchestration.train_jobs import storage_location
from ddray.run_dir import RunDir
from ddray.training.local import LocalResult, LocalSettings, fingerprint, train_subdomain
from ddray.training.loop import Callback

EXPERIMENT = "search"
STATE_FILE = "state.ckpt"
MODEL_FILE = "model.pt"
PROBS_FILE = "probabilities.npz"
RESULT_FILE = "local.json"
BEST_FILE = "best_configs.json"
INT_PARAMS = ("batch_size", "epochs")
FLOAT_PARAMS = ("lr", "weight_decay", "width")
ASHA_REDUCTION_FACTOR = 2  # few samples per subdomain: halve, do not quarter
OPTUNA_WINDOW = 4  # default W of _InOrder when tune.max_concurrent_trials is unset
OPTUNA_STARTUP = 10  # TPESampler's n_startup_trials: its first suggestions only draw from the seeded RNG


class SearchInterrupted(KeyboardInterrupt):
    """The search was stopped before every trial ended; its state is saved for --resume."""


# ------------------------------------------------------------------ search space


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
    """Sampled values -> LocalSettings fields (batch size and epochs as ints)."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        if key in INT_PARAMS:
            out[key] = max(1, int(round(float(value))))
        elif key in FLOAT_PARAMS:
            out[key] = float(value)
        elif key == "optimizer":
            out[key] = str(value)
    if "width" in out and not 0 < out["width"] <= 1:
        raise ValueError(f"sampled width {out['width']} is outside (0, 1]; narrow tune.space.width")
    return out


def _metric_keys(tune_cfg: TuneConfig) -> tuple[str, str, str]:
    """(per-epoch metric for ASHA, selected-epoch metric for search and selection, mode)."""
    mode = "max" if tune_cfg.metric == "val_accuracy" else "min"
    return tune_cfg.metric, f"selected_{tune_cfg.metric}", mode


# ------------------------------------------------------------------ searcher


def subdomain_seed(seed: int, index: int) -> int:
    """The searcher seed of subdomain ``index`` in a run with ``seed``: an independent stream per
    (seed, index) pair (numpy's SeedSequence), so no two subdomains or runs share one by accident."""
    return int(np.random.SeedSequence([int(seed) % 2**32, int(index)]).generate_state(1)[0])


class _InOrder:
    """A model-based searcher (Optuna's TPE) that learns from a fixed set of trials at each suggestion.

    TPE's k-th suggestion depends on which earlier trials have finished, which with parallel
    trials depends on timing. Here the k-th suggestion (k >= ``startup``) waits (returns None;
    Tune asks again later, and other subdomains fill the free slots) until trials 0..k-``window``
    have ended, and the inner searcher has been told exactly those: later trials' results are
    held back until their turn. Before ``startup`` TPE samples at random from its seeded RNG
    whatever has finished, so nothing waits there, and trials that every later suggestion will
    see anyway (0..startup-window) are passed on as soon as they end. At most ``window`` trials
    of a subdomain run at once after ``startup``. Attribute reads fall through to the inner searcher.
    """

    def __init__(self, inner: Any, window: int, startup: int = OPTUNA_STARTUP):
        self.inner, self.window, self.startup = inner, max(1, int(window)), int(startup)
        self.order: list[str] = []  # trial ids in suggestion order
        self.held: dict[str, list[tuple[str, tuple]]] = {}  # calls not yet passed on, per trial
        self.ended: set[str] = set()
        self.told: set[str] = set()

    def __getattr__(self, name: str) -> Any:
        inner = self.__dict__.get("inner")
        if inner is None or name.startswith("__"):
            raise AttributeError(name)
        return getattr(inner, name)

    def _tell(self, trial_id: str) -> None:
        for method, args in self.held.pop(trial_id, []):
            getattr(self.inner, method)(trial_id, *args)
        self.told.add(trial_id)

    def suggest(self, trial_id: str):
        k = len(self.order)
        if k >= self.startup:
            known = self.order[: max(0, k - self.window + 1)]
            if any(t not in self.ended for t in known):
                return None
            for t in known:
                if t not in self.told:
                    self._tell(t)
        config = self.inner.suggest(trial_id)
        if config is not None and config != Searcher.FINISHED:
            self.order.append(trial_id)
        return config

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        self.held.setdefault(trial_id, []).append(("on_trial_result", (result,)))

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        self.held.setdefault(trial_id, []).append(("on_trial_complete", (result, error)))
        self.ended.add(trial_id)
        if trial_id in self.order and self.order.index(trial_id) <= self.startup - self.window:
            self._tell(trial_id)  # every suggestion from ``startup`` on knows it: no need to wait


class _VariantQueue:
    """Random search for one subdomain: Tune's variant generator, ``num_samples`` passes over the grid."""

    def __init__(self, space: dict[str, Any], num_samples: int, seed: int):
        rng = np.random.RandomState(seed % (2**32))
        self.queue = [spec for _ in range(num_samples) for _, spec in generate_variants(space, random_state=rng)]

    def suggest(self, trial_id: str):
        return self.queue.pop(0) if self.queue else Searcher.FINISHED

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        pass

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        pass


class SubdomainSearcher(Searcher):
    """One inner searcher per subdomain; suggestions carry ``subdomain`` and go subdomain by subdomain."""

    def __init__(
        self,
        subdomains: Sequence[int],
        space: dict[str, Any],
        *,
        num_samples: int,
        algorithm: str,
        metric: str,
        mode: str,
        seed: int = 0,
        window: int = OPTUNA_WINDOW,
    ):
        super().__init__(metric=metric, mode=mode)
        per_subdomain = num_samples * math.prod(len(v["grid_search"]) for v in space.values() if isinstance(v, dict) and "grid_search" in v)
        self._remaining = {int(i): per_subdomain for i in subdomains}
        self._owner: dict[str, int] = {}
        self._inner: dict[int, Any] = {}
        for i in self._remaining:
            if algorithm == "optuna" and space:
                from ray.tune.search.optuna import OptunaSearch

                optuna = OptunaSearch(
                    space=OptunaSearch.convert_search_space(space), metric=metric, mode=mode, seed=subdomain_seed(seed, i)
                )
                self._inner[i] = _InOrder(optuna, window)
            else:  # random search ignores results: nothing to order
                self._inner[i] = _VariantQueue(space, num_samples, subdomain_seed(seed, i))

    @property
    def total(self) -> int:
        return sum(self._remaining.values()) + len(self._owner)

    def set_search_properties(self, metric: str | None, mode: str | None, config: dict, **spec) -> bool:
        return True  # the space and metric are ours; Tune's param_space stays empty

    def suggest(self, trial_id: str):
        for i in sorted(self._remaining):
            if self._remaining[i] <= 0:
                continue
            config = self._inner[i].suggest(trial_id)
            if config == Searcher.FINISHED:
                self._remaining[i] = 0
                continue
            if config is None:
                continue
            self._remaining[i] -= 1
            self._owner[trial_id] = i
            return {"subdomain": i, **config}
        return Searcher.FINISHED if all(r <= 0 for r in self._remaining.values()) else None

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if trial_id in self._owner and not result.get("skipped"):
            self._inner[self._owner[trial_id]].on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        i = self._owner.get(trial_id)
        if i is None:
            return
        usable = not error and result is not None and _finite(result.get(self.metric))
        self._inner[i].on_trial_complete(trial_id, result if usable else None, error=not usable)

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as f:
            pickle.dump(self.__dict__.copy(), f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            self.__dict__.update(pickle.load(f))


# ------------------------------------------------------------------ scheduler


class PerSubdomainScheduler(FIFOScheduler):
    """One ASHA per subdomain: pruning only compares trials of the same subdomain."""

    _supports_buffered_results = False

    def __init__(self, *, metric: str, mode: str, max_t: int, grace_period: int, reduction_factor: float = ASHA_REDUCTION_FACTOR):
        super().__init__()
        self._metric, self._mode = metric, mode
        self._max_t, self._grace_period = max_t, min(grace_period, max_t)
        self._reduction_factor = reduction_factor
        self._by_subdomain: dict[int, ASHAScheduler] = {}

    def set_search_properties(self, metric: str | None, mode: str | None, **spec) -> bool:
        return True

    def for_subdomain(self, index: int) -> ASHAScheduler:
        if index not in self._by_subdomain:
            self._by_subdomain[index] = ASHAScheduler(
                time_attr="epoch",
                metric=self._metric,
                mode=self._mode,
                max_t=self._max_t,
                grace_period=self._grace_period,
                reduction_factor=self._reduction_factor,
            )
        return self._by_subdomain[index]

    def _asha(self, trial) -> ASHAScheduler:
        return self.for_subdomain(int(trial.config["subdomain"]))

    def on_trial_add(self, tune_controller, trial) -> None:
        self._asha(trial).on_trial_add(tune_controller, trial)

    def on_trial_error(self, tune_controller, trial) -> None:
        self._asha(trial).on_trial_error(tune_controller, trial)

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        if result.get("skipped"):
            return TrialScheduler.CONTINUE
        return self._asha(trial).on_trial_result(tune_controller, trial, result)

    def on_trial_complete(self, tune_controller, trial, result: dict) -> None:
        self._asha(trial).on_trial_complete(tune_controller, trial, result)

    def on_trial_remove(self, tune_controller, trial) -> None:
        self._asha(trial).on_trial_remove(tune_controller, trial)

    def debug_string(self) -> str:
        return f"Per-subdomain ASHA ({len(self._by_subdomain)} subdomains, max_t={self._max_t})"


# ------------------------------------------------------------------ the trial (runs on a Tune actor)


class _TuneReporter(Callback):
    """Reports each epoch to Tune with the resumable state as checkpoint (the last epoch is reported by the trial)."""

    def __init__(self, subdomain: int, epochs: int, data_fingerprint: str, workdir: Path, node_id: str):
        self.subdomain, self.epochs, self.fp, self.workdir, self.node_id = subdomain, epochs, data_fingerprint, workdir, node_id
        self.best_epoch, self.best_acc, self.best_loss = 0, float("nan"), float("nan")
        self.resumed_from_epoch = 0
        self.report_seconds = 0.0  # time spent handing results and checkpoints to Tune

    def track(self, metrics: Mapping[str, float]) -> None:
        """Same rule as ``fit``'s keep_best: first epoch, then strictly better validation accuracy."""
        if self.best_epoch == 0 or metrics["val_accuracy"] > self.best_acc:
            self.best_epoch, self.best_acc, self.best_loss = int(metrics["epoch"]), metrics["val_accuracy"], metrics["val_loss"]

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
        if epoch < self.epochs:  # the last epoch goes out with the finished artifacts
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
    base: LocalSettings,
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
    settings = replace(base, **coerce_overrides(config))
    x_train = np.ascontiguousarray(sub.extract(data["x_train"]), dtype=np.float32)
    data_fp = fingerprint(torch.from_numpy(x_train))
    del x_train
    workdir = Path(tempfile.mkdtemp(prefix=f"ddray-sub{index:03d}-"))
    try:
        state = workdir / STATE_FILE
        reporter = _TuneReporter(index, settings.epochs, data_fp, workdir, ray.get_runtime_context().get_node_id())
        checkpoint = tune.get_checkpoint()
        if checkpoint is not None:
            with checkpoint.as_directory() as d:
                if (Path(d) / STATE_FILE).exists():
                    shutil.copyfile(Path(d) / STATE_FILE, state)
        if state.exists():
            for m in torch.load(state, map_location="cpu", weights_only=True)["history"]:
                reporter.track(m)
                reporter.resumed_from_epoch = int(m["epoch"])
        result = train_subdomain(sub, data, settings, checkpoint_path=state, model_path=workdir / MODEL_FILE, callbacks=[reporter])
        np.savez(workdir / PROBS_FILE, **result.probabilities)
        summary = {f.name: getattr(result, f.name) for f in fields(result) if f.name not in ("probabilities", "model_state")}
        (workdir / RESULT_FILE).write_text(json.dumps(summary, default=float))
        final = reporter.metrics(result.history[-1])
        final.update(final=1, train_seconds=float(result.train_seconds), report_seconds=reporter.report_seconds,
                     selected_val_accuracy=float(result.val_accuracy), selected_epoch=result.best_epoch,
                     selected_val_loss=float(result.history[result.best_epoch - 1]["val_loss"]))
        tune.report(final, checkpoint=tune.Checkpoint.from_directory(str(workdir)))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


# ------------------------------------------------------------------ driver side


@dataclass
class TrialRecord:
    trial_id: str
    subdomain: int
    config: dict
    metrics: dict
    checkpoint: Any  # tune.Checkpoint | None
    error: str | None
    status: str = ""  # completed | stopped | failed | skipped (set by classify)

    @classmethod
    def from_trial(cls, trial) -> "TrialRecord":
        error = None
        if trial.status == "ERROR":
            error = _trial_error(trial)
        return cls(
            trial_id=trial.trial_id,
            subdomain=int(trial.config.get("subdomain", -1)),
            config={k: v for k, v in trial.config.items() if k != "subdomain"},
            metrics=dict(trial.last_result or {}),
            checkpoint=trial.checkpoint,
            error=error,
        )


def _trial_error(trial) -> str:
    path = getattr(trial, "error_file", None)
    try:
        if path and os.path.exists(path):
            lines = Path(path).read_text().strip().splitlines()
            return " ".join(line.strip() for line in lines[-3:])[-400:]
    except OSError:
        pass
    return "trial raised an error (see the Tune trial folder)"


def _finite(value: Any) -> bool:
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
        elif not _finite(r.metrics.get(selection_metric)):
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
        tie = float(r.metrics.get(other)) if _finite(r.metrics.get(other)) else float("-inf") * -other_sign
        return (-sign * float(r.metrics[selection_metric]), -other_sign * tie, r.trial_id)

    return sorted(candidates, key=key)[0]


@dataclass
class _SearchMonitor:
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
            if len(mine) >= self.per_subdomain and all(self._has_ended(t, current=trial) for t in mine):
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
        _write_trials_csv(self.out_dir / f"sub{index:03d}_trials.csv", records, best)
        if best is None:
            causes = "; ".join(f"{r.trial_id}: {r.error or r.status}" for r in records) or "no trial ran"
            raise SubdomainFailed(
                f"subdomain {index}: none of its {len(records)} Tune trials finished ({causes}). "
                f"Finished subdomains are kept; rerun with --resume to continue."
            )
        task = self.tasks[index]
        with best.checkpoint.as_directory() as d:
            d = Path(d)
            model_path = Path(task.model_path)
            model_path.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(d / MODEL_FILE, model_path)
            with np.load(d / PROBS_FILE) as npz:
                probabilities = {k: npz[k] for k in npz.files}
            summary = json.loads((d / RESULT_FILE).read_text())
        result = LocalResult(probabilities=probabilities, **summary)
        entry = {
            "subdomain": index,
            "config": best.config,
            "validation_accuracy": float(best.metrics["selected_val_accuracy"]),
            "validation_loss": float(best.metrics["selected_val_loss"]),
            "trial_id": best.trial_id,
            "trials": len(records),
        }
        self.best[index] = entry
        _write_best(self.out_dir / BEST_FILE, self.best, self.selection_metric)
        where = {"node_id": best.metrics.get("node_id"), "trial_id": best.trial_id, "tune_config": best.config}
        self.on_result(result, where)
        self.on_event({"subdomain": index, "status": "done", "test_accuracy": result.test_accuracy, "trial": best.trial_id,
                       "trials_done": len(records), "trials_failed": sum(r.status == "failed" for r in records)})


_ACTIVE = threading.local()
# One search at a time per driver process: Tune's trainable registry is process-global and not
# thread-safe (ray-project/ray#30091). Separate processes (the REST service's jobs) are separate drivers.
_ONE_SEARCH = threading.Lock()


@contextmanager
def _monitoring(monitor: _SearchMonitor) -> Iterator[None]:
    """The monitor of the search running in this thread (Tune runs its loop in the caller's thread)."""
    previous = getattr(_ACTIVE, "monitor", None)
    _ACTIVE.monitor = monitor
    try:
        yield
    finally:
        _ACTIVE.monitor = previous


class _MonitorCallback(tune.Callback):
    """Stateless, so it pickles into the experiment and still works after ``Tuner.restore``."""

    @staticmethod
    def _monitor() -> _SearchMonitor | None:
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


def _write_trials_csv(path: Path, records: Sequence[TrialRecord], best: TrialRecord | None) -> None:
    import pandas as pd

    columns = ["epoch", "selected_epoch", "selected_val_accuracy", "selected_val_loss", "val_accuracy",
               "val_loss", "train_loss", "fingerprint", "resumed_from_epoch", "time_total_s"]
    rows = []
    for r in records:
        row = {"trial_id": r.trial_id, "subdomain": r.subdomain, "status": r.status, "chosen": best is not None and r is best}
        row.update({f"config/{k}": v for k, v in r.config.items()})
        row.update({k: r.metrics.get(k) for k in columns})
        row["error"] = r.error
        rows.append(row)
    pd.DataFrame(rows).to_csv(path, index=False)


def _read_best(path: Path) -> dict[int, dict]:
    if not path.exists():
        return {}
    return {int(e["subdomain"]): e for e in json.loads(path.read_text()).get("best", [])}


def _write_best(path: Path, best: Mapping[int, dict], metric: str) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"metric": metric, "best": [best[i] for i in sorted(best)]}, indent=2, default=str))
    os.replace(tmp, path)


def make_trainable(tasks: Sequence[LocalTask], data_ref: Any, cpus: float, gpus: float):
    """The function trainable with the data reference and the subdomains still to train."""
    if not tasks:
        raise ValueError("no subdomain to search")
    trainable = tune.with_parameters(
        subdomain_trial,
        data=data_ref,
        subdomains={t.sub.index: t.sub for t in tasks},
        base=tasks[0].settings,
        cpus=cpus,
    )
    return tune.with_resources(trainable, {"cpu": cpus, "gpu": gpus})


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
    out_dir = run_dir.root / "tune"
    out_dir.mkdir(parents=True, exist_ok=True)
    experiment_path = f"{storage_location(config, run_dir, 'tune')}/{EXPERIMENT}"
    metric, _, mode = _metric_keys(tune_cfg)
    best = _read_best(out_dir / BEST_FILE)  # subdomains finished in earlier sessions
    started = time.perf_counter()
    restored, concurrency, monitor = False, 0, None
    if tasks:
        with _ONE_SEARCH:
            restored, concurrency, monitor = _search(config, run_dir, tasks, data_ref, slots, on_event, on_result, best)
    counts: dict[str, int] = {}
    for records in (monitor.records.values() if monitor else []):
        for r in records:
            counts[r.status] = counts.get(r.status, 0) + 1
    return {
        "best": [best[i] for i in sorted(best)],
        "metric": metric,
        "mode": mode,
        "search_alg": tune_cfg.search_alg,
        "scheduler": tune_cfg.scheduler,
        "num_samples": tune_cfg.num_samples,
        "trials_per_subdomain": trials_per_subdomain(tune_cfg),
        "max_concurrent_trials": concurrency,
        "trials": counts,
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
) -> tuple[bool, int, _SearchMonitor]:
    """Build or restore the experiment, run it, finalise every subdomain; (restored, concurrency, monitor)."""
    tune_cfg, res = config.tune, config.resources
    out_dir = run_dir.root / "tune"
    storage = storage_location(config, run_dir, "tune")
    experiment_path = f"{storage}/{EXPERIMENT}"
    metric, selection_metric, mode = _metric_keys(tune_cfg)
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
        searcher = SubdomainSearcher(
            [t.sub.index for t in tasks],
            search_space(tune_cfg),
            num_samples=tune_cfg.num_samples,
            algorithm=tune_cfg.search_alg,
            metric=selection_metric,
            mode=mode,
            seed=config.seed,
            window=tune_cfg.max_concurrent_trials or OPTUNA_WINDOW,  # not the cluster's slots: same W everywhere
        )
        scheduler = None
        if tune_cfg.scheduler == "asha":
            scheduler = PerSubdomainScheduler(
                metric=metric, mode=mode, max_t=max_epochs(tune_cfg, tasks[0].settings.epochs), grace_period=tune_cfg.grace_period
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
                callbacks=[_MonitorCallback()],
                failure_config=tune.FailureConfig(max_failures=res.max_retries),
                # two per trial: Tune then snapshots its state every second trial checkpoint,
                # so a resume redoes at most one epoch and never points at a deleted checkpoint
                checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
                verbose=0,
            ),
        )
    monitor = _SearchMonitor(
        tasks={t.sub.index: t for t in tasks},
        per_subdomain=per_subdomain,
        selection_metric=selection_metric,
        mode=mode,
        asha=tune_cfg.scheduler == "asha",
        out_dir=out_dir,
        on_event=on_event,
        on_result=on_result,
        best=best,
    )
    with _monitoring(monitor):
        grid = tuner.fit()
    _finish(monitor, grid, out_dir, experiment_path)
    return restored, concurrency, monitor


def _finish(monitor: _SearchMonitor, grid, out_dir: Path, experiment_path: str) -> None:
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
