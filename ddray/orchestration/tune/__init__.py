"""Per-subdomain hyperparameter search with Ray Tune.

Design
------
- One Tune experiment holds the trials of every subdomain; the subdomain index is part of each
  trial's config, and every trial trains one local CNN on its own actor with the subdomain's
  resources (:mod:`.trial`).

  Why one experiment rather than one per subdomain: Tune reuses trial actors
  (``reuse_actors=True``) only within an experiment. With one experiment the cluster starts one
  trial process per slot for the whole search; with one experiment per subdomain it starts them
  again for every subdomain, each paying process start-up and ``import torch`` (about 3-5 s
  here), which alone is more than the 2 s per trial budget when a subdomain has few samples.
  Measured on the 2-core machine, shared with other test runs (8 one-second trials importing
  torch, 2 at a time, ideal 4 s): one experiment 14.8 s and 15.5 s; four experiments in threads
  (registered trainables) 26.7 s and 26.8 s; four in sequence 39.3 s.
  ``benchmarks/bench_tune_overhead.py`` measures the whole search against plain trainings. One
  experiment also avoids running several Tune experiments in one driver at all (officially
  unsupported; threads have crashed in ``tune/registry.py`` and cross-fed parameters,
  ray-project/ray#30091), and a driver runs one search at a time (:mod:`.search`).

- Subdomains never mix in the search (:mod:`.searcher`, one searcher per subdomain, seeded per
  subdomain for reproducibility) or the pruning (:mod:`.scheduler`, one ASHA per subdomain).

- The driver side (:mod:`.monitor`) finalises each subdomain as soon as its trials have ended,
  choosing its best trial with the pure rules of :mod:`.selection` (validation only; failed,
  stopped and skipped trials are never candidates).

- How the budget is shared: ``tune.allocation: uniform`` (``num_samples`` x grid points per
  subdomain) or ``adaptive`` (the same total in rounds, where another trial is expected to raise
  validation accuracy most): :mod:`.adaptive` (the searcher) and :mod:`.allocation` (the pure rule,
  no Ray); docs/tuning.md.

- Resume and interruption: :mod:`.search` (``Tuner.restore`` of ``RUN/tune/search``,
  :class:`SearchInterrupted`).

Modules: :mod:`.space` (the ``tune:`` section as Tune samplers), :mod:`.searcher`,
:mod:`.adaptive`, :mod:`.allocation` (no Ray), :mod:`.scheduler`, :mod:`.trial` (runs on Tune's actors), :mod:`.selection` (no Ray),
:mod:`.monitor` and :mod:`.search` (the driver side). The package exports :func:`run_search` and
:class:`SearchInterrupted`, loaded on first use: importing :mod:`.selection` alone imports no Ray.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ddray.orchestration.tune.search import SearchInterrupted, run_search

__all__ = ["SearchInterrupted", "run_search"]


def __getattr__(name: str) -> Any:
    """``run_search`` and ``SearchInterrupted`` on first use, so that importing :mod:`.selection`
    does not import Ray through this package."""
    if name in __all__:
        from ddray.orchestration.tune import search

        return getattr(search, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
