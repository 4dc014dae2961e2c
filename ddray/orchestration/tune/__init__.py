"""Per-subdomain hyperparameter search with Ray Tune (being split out of tune_search.py)."""

from ddray.orchestration.tune_search import SearchInterrupted, run_search

__all__ = ["SearchInterrupted", "run_search"]
