"""Per-subdomain searchers: subdomains never mix in the search.

:class:`SubdomainSearcher` holds one searcher per subdomain (random: Tune's own variant generator
over the ``tune:`` space; optuna: one ``OptunaSearch`` each, so TPE only learns from its own
subdomain). Trials are suggested subdomain by subdomain, so early subdomains finish (and are
saved) first.

Reproducibility: every subdomain's searcher is seeded from the run's ``seed`` and the subdomain
index (:func:`subdomain_seed`), so the same config and seed suggest the same configurations, and
trials train with the seeds of plain local trainings. Optuna's TPE learns from finished trials, and
which ones have finished when it suggests depends on timing ("if two trials finish at the same
time, the convergence of the search algorithm might be influenced by which trial result is
processed first", Ray Tune's docs on reproducible runs): :class:`_InOrder` makes its k-th
suggestion see exactly the results of that subdomain's trials 0..k-W (W =
``tune.max_concurrent_trials``, default 4). ASHA's pruning still depends on the order results
arrive, so only ``scheduler: none`` searches are exactly reproducible.

The searcher is pickled into the experiment (:meth:`SubdomainSearcher.save`) and restored by
``Tuner.restore``; its class path is part of that state.
"""

from __future__ import annotations

import math
import pickle
from typing import Any, Sequence

import numpy as np
from ray.tune.search import Searcher
from ray.tune.search.variant_generator import generate_variants

from ddray.orchestration.tune.selection import finite

OPTUNA_WINDOW = 4  # default W of _InOrder when tune.max_concurrent_trials is unset
OPTUNA_STARTUP = 10  # TPESampler's n_startup_trials: its first suggestions only draw from the seeded RNG


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
        self.space, self.rng = space, np.random.RandomState(seed % (2**32))
        self.queue = [spec for _ in range(num_samples) for _, spec in generate_variants(space, random_state=self.rng)]

    def suggest(self, trial_id: str):
        if not self.queue:  # adaptive allocation may ask for more: another pass, from the same seeded stream
            self.queue = [spec for _, spec in generate_variants(self.space, random_state=self.rng)]
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
        usable = not error and result is not None and finite(result.get(self.metric))
        self._inner[i].on_trial_complete(trial_id, result if usable else None, error=not usable)

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as f:
            pickle.dump(self.__dict__.copy(), f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            self.__dict__.update(pickle.load(f))
