"""Where the next search trials go (``tune.allocation: adaptive``): a pure rule, no Ray.

The rule
--------
Every subdomain first gets ``min_trials`` trials (round 0). Each later round hands out up to
``batch`` trials one at a time, each to the subdomain with the largest *expected gain* of one
more trial: the expected rise of its best validation accuracy.

- Model: a subdomain's trial results (selected validation accuracy of each finished trial) are
  draws from a normal distribution whose spread ``sigma`` says how much the result depends on the
  configuration. The expected best of ``n`` draws is ``mean + sigma * e(n)``, with ``e(n)`` the
  expected maximum of ``n`` standard normals (:func:`expected_max`), so one more trial is worth
  ``sigma * (e(n + 1) - e(n))``: proportional to the spread and falling with every trial already
  spent (diminishing returns spread the budget instead of pouring it all into one subdomain).
- ``sigma`` is the spread of the results *beyond validation noise*: the sample variance minus the
  binomial variance ``p (1 - p) / n_val`` every accuracy measured on ``n_val`` samples has anyway.
  Without that correction a subdomain at chance would look configuration-dependent just from
  noise. A small floor (``NOISE_FLOOR`` x the noise) keeps informative subdomains with identical
  results in the running, so the budget is spent while any of them has headroom.
- A subdomain at chance (its best result not clearly above the majority-class rate ``chance``:
  ``best <= chance + AT_CHANCE_Z * sqrt(chance (1 - chance) / n_val)``), one without any finished
  trial (all failed), or one already at 100 % gets gain 0 and no trial beyond its minimum. The
  gain is also capped by the headroom ``1 - best``.
- When *no* subdomain is above chance (every one at chance or failed after the minimum), the
  evidence is too thin to act on: the round falls back to uniform (fewest trials first), so the
  budget is kept. Only when every subdomain above chance is already at 100 % are trials left
  unspent (``allocate`` returns fewer subdomains than asked).

Why this rule: it needs only the numbers every trial reports, it is exact for the one thing it
models (the expected best of n draws), and it answers the two cases the issue names: a subdomain at
chance for every configuration stays at its minimum, and one whose results depend strongly on the
configuration gets more. An upper confidence bound on the mean would instead favour subdomains
with a high mean, which does not mean another configuration would do better there.

Ties go to the lower subdomain index, so the allocation is a deterministic function of the
finished trials (the searcher also plans each round only from trials of finished rounds).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

AT_CHANCE_Z = 2.5  # the best of a few trials at chance rarely lies this many noise sds above chance
NOISE_FLOOR = 0.25  # sigma of an informative subdomain is at least this fraction of its validation noise


def expected_max(n: int) -> float:
    """Expected maximum of ``n`` independent standard normal draws (0 for n <= 1).

    ``E[max] = int x * n * phi(x) * Phi(x)^(n-1) dx``, integrated numerically on a fine grid.
    """
    if n <= 1:
        return 0.0
    x = np.linspace(-9.0, 9.0, 20001)
    phi = np.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)
    cdf = 0.5 * (1.0 + np.vectorize(math.erf)(x / math.sqrt(2.0)))
    return float(np.trapezoid(x * n * phi * cdf ** (n - 1), x))


_E_CACHE: dict[int, float] = {}


def _e(n: int) -> float:
    if n not in _E_CACHE:
        _E_CACHE[n] = expected_max(n)
    return _E_CACHE[n]


@dataclass(frozen=True)
class SubdomainState:
    """What the rule knows about one subdomain: its trial count and finished results."""

    trials: int  # trials spent (finished, failed, or planned in this round)
    results: tuple[float, ...]  # selected validation accuracy of each finished trial
    sigma: float  # configuration spread beyond validation noise (with the floor)
    best: float  # best result, NaN when none
    at_chance: bool


def assess(results: Sequence[float | None], trials: int, *, chance: float, n_val: int) -> SubdomainState:
    """Summarise one subdomain's history (``None`` entries are failed trials)."""
    values = tuple(float(v) for v in results if v is not None and math.isfinite(float(v)))
    if not values:
        return SubdomainState(trials, values, 0.0, float("nan"), at_chance=True)
    n_val = max(1, int(n_val))
    best = max(values)
    noise = math.sqrt(chance * (1.0 - chance) / n_val)
    at_chance = best <= chance + AT_CHANCE_Z * noise
    if at_chance:
        return SubdomainState(trials, values, 0.0, best, True)
    mean = sum(values) / len(values)
    p = min(max(mean, 1.0 / n_val), 1.0 - 1.0 / n_val)
    measurement = p * (1.0 - p) / n_val  # binomial variance of one accuracy
    sample_var = float(np.var(values, ddof=1)) if len(values) > 1 else 0.0
    sigma = max(math.sqrt(max(0.0, sample_var - measurement)), NOISE_FLOOR * math.sqrt(measurement))
    return SubdomainState(trials, values, sigma, best, False)


def expected_gain(state: SubdomainState, extra: int = 0) -> float:
    """Expected rise of the subdomain's best accuracy from one more trial, after ``extra`` planned ones."""
    if state.at_chance or not state.results:
        return 0.0
    headroom = max(0.0, 1.0 - state.best)
    n = len(state.results) + extra
    return min(headroom, state.sigma * (_e(n + 1) - _e(n)))


def allocate(
    histories: Mapping[int, Sequence[float | None]],
    trials: Mapping[int, int],
    count: int,
    *,
    chance: float,
    n_val: int,
) -> list[int]:
    """The subdomains of the next ``count`` trials (repeats allowed; possibly fewer when nothing can gain).

    ``histories[i]``: selected validation accuracies of subdomain i's finished trials (``None`` for
    a failed trial); ``trials[i]``: trials it has had so far. Greedy: each trial goes to the largest
    expected gain, which then shrinks for that subdomain (one more planned draw).
    """
    states = {i: assess(histories.get(i, ()), trials.get(i, 0), chance=chance, n_val=n_val) for i in trials}
    planned = {i: 0 for i in states}
    out: list[int] = []
    if states and all(s.at_chance for s in states.values()):
        # no subdomain is above chance (or all failed): the minimum was too small to tell anything;
        # fall back to uniform, fewest trials first
        for _ in range(max(0, int(count))):
            i = min(states, key=lambda k: (states[k].trials + planned[k], k))
            planned[i] += 1
            out.append(i)
        return out
    for _ in range(max(0, int(count))):
        gains = {i: expected_gain(s, planned[i]) for i, s in states.items()}
        best = max(sorted(gains), key=lambda i: gains[i], default=None)
        if best is None or gains[best] <= 0.0:
            break
        planned[best] += 1
        out.append(best)
    return out


def gains(histories: Mapping[int, Sequence[float | None]], *, chance: float, n_val: int) -> dict[int, float]:
    """The expected gain of one more trial for every subdomain (for reports and tests)."""
    return {i: expected_gain(assess(h, len(h), chance=chance, n_val=n_val)) for i, h in histories.items()}
