"""Per-subdomain pruning: one ASHA per subdomain.

:class:`PerSubdomainScheduler` holds one ``ASHAScheduler`` per subdomain, so a trial is only ever
stopped for being worse than trials of its own subdomain (their losses live on different scales).
ASHA's ``time_attr`` is the epoch. Like the searcher, the scheduler is pickled into the experiment
and restored by ``Tuner.restore``.
"""

from __future__ import annotations

from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler

ASHA_REDUCTION_FACTOR = 2  # few samples per subdomain: halve, do not quarter


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
