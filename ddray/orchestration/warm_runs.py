"""Several runs in one process on one Ray, each training on the subdomain workers the run before left.

A subdomain worker's start (a process, ``import torch``, the first optimizer step's lazy imports)
lands in every run's local phase. Inside :func:`warm_runs` Ray starts (or is joined) once, each run
(``driver.run(..., keep_warm=True)``) hands its workers to the cluster's warm pool at its end
(:func:`~ddray.orchestration.warm_pool.hand_back`), the next run takes them at its start, and the
end frees whatever is left. ``ddray sweep`` and ``ddray.Session`` run this way.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from ddray.orchestration.session import ray_session
from ddray.orchestration.warm_pool import free_warm_workers, pool


@contextmanager
def warm_runs(address: str | None = None, *, num_cpus: int | None = None) -> Iterator[None]:
    """Ray up for the runs made inside (each with ``keep_warm=True``); their idle workers are
    stopped at the end, also when a run fails, before an embedded Ray shuts down."""
    with ray_session(address, num_cpus=num_cpus) as ray_up:
        ray_up()
        pool(create=True)  # not waited for: its process starts during the first run, not in the second's start
        try:
            yield
        finally:
            free_warm_workers()
