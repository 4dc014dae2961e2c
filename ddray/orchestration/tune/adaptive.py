"""``tune.allocation: adaptive``: the same total budget, spent in rounds where it helps most.

Design: one searcher inside the one Tune experiment
---------------------------------------------------
:class:`AdaptiveSearcher` extends :class:`~.searcher.SubdomainSearcher` (one inner searcher per
subdomain, seeded per subdomain): it only changes *which subdomain* the next suggestion belongs
to. Rounds:

- Round 0: every subdomain gets ``tune.min_trials_per_subdomain`` trials.
- Round r >= 1 starts once every trial of the earlier rounds has ended: the pure rule
  (:func:`~.allocation.allocate`) plans up to ``W`` trials (``tune.max_concurrent_trials``, default
  4) from the finished results, and they are suggested; and so on until ``num_samples x grid points
  x N`` trials have been suggested, or until no subdomain can gain (the rest is left unspent).

Why a searcher and not a sequence of ``Tuner.fit`` rounds: the experiment stays one experiment,
so Tune's actor reuse (``reuse_actors=True``) lasts the whole search, the per-subdomain searchers
(Optuna's TPE included) keep their state across rounds without any hand-over, ASHA keeps its
per-subdomain rungs, and resume is the existing ``Tuner.restore`` of the experiment, which also
restores this searcher's state (round, plan, histories) from its pickled ``__dict__``.

Why rounds with a barrier rather than deciding at every free slot: a decision from whatever trials
happen to have finished would depend on timing; planned only from finished rounds, the allocation
is a function of the trial results, so the same seed gives the same allocation (with
``scheduler: none``). The cost is slots idling while a round's last trials finish; a round is
``W`` trials so that, with ``W`` at the cluster's concurrency, a round fills the cluster once.

Each suggestion carries ``round`` next to ``subdomain`` in the trial's config (Tune keeps it across
restore); :class:`~.selection.TrialRecord` takes it out of the hyperparameters.
"""

from __future__ import annotations

from typing import Any, Sequence

from ray.tune.search import Searcher

from ddray.orchestration.tune.allocation import allocate
from ddray.orchestration.tune.searcher import OPTUNA_WINDOW, SubdomainSearcher
from ddray.orchestration.tune.selection import finite

ACCURACY_KEY = "selected_val_accuracy"  # the rule works on validation accuracy whatever tune.metric selects


class AdaptiveSearcher(SubdomainSearcher):
    """Suggests round 0 (the minimum per subdomain), then rounds planned by :func:`~.allocation.allocate`."""

    def __init__(
        self,
        subdomains: Sequence[int],
        space: dict[str, Any],
        *,
        num_samples: int,
        algorithm: str,
        metric: str,
        mode: str,
        min_trials: int,
        chance: float,
        n_val: int,
        seed: int = 0,
        window: int = OPTUNA_WINDOW,
    ):
        super().__init__(subdomains, space, num_samples=num_samples, algorithm=algorithm, metric=metric, mode=mode, seed=seed, window=window)
        per_subdomain = next(iter(self._remaining.values()), 0)
        self.budget = per_subdomain * len(self._remaining)
        self.min_trials = min(int(min_trials), per_subdomain)
        self.batch = max(1, int(window))
        self.chance, self.n_val = float(chance), int(n_val)
        self.round = 0
        self.plan: list[int] = [i for i in sorted(self._remaining) for _ in range(self.min_trials)]
        self.open: set[str] = set()  # trials of the current round that have not ended
        self.spent = {i: 0 for i in self._remaining}
        self.history: dict[int, list[float | None]] = {i: [] for i in self._remaining}
        self.suggested = 0
        self.unspent = 0

    def suggest(self, trial_id: str):
        if not self.plan:
            if self.open:
                return None  # the round's results decide the next round: wait for them
            left = self.budget - self.suggested
            if left <= 0:
                return Searcher.FINISHED
            self.plan = allocate(self.history, self.spent, min(self.batch, left), chance=self.chance, n_val=self.n_val)
            if not self.plan:  # no subdomain can gain from another trial
                self.unspent = left
                return Searcher.FINISHED
            self.round += 1
        i = self.plan[0]
        config = self._inner[i].suggest(trial_id)
        if config is None or config == Searcher.FINISHED:
            return None  # an ordered Optuna searcher waits for its own earlier trials
        self.plan.pop(0)
        self.spent[i] += 1
        self.suggested += 1
        self._owner[trial_id] = i
        self.open.add(trial_id)
        return {"subdomain": i, "round": self.round, **config}

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        super().on_trial_complete(trial_id, result, error)
        i = self._owner.get(trial_id)
        if i is None or trial_id not in self.open:
            return
        self.open.discard(trial_id)
        value = None if error or result is None else result.get(ACCURACY_KEY)
        self.history[i].append(float(value) if finite(value) else None)

    def summary(self) -> dict[str, Any]:
        return {"budget": self.budget, "rounds": self.round + 1, "unspent": self.unspent, "min_trials_per_subdomain": self.min_trials}
