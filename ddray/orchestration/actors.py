"""Stopping actors, the one way ddray frees the CPUs and GPUs of workers it is done with.

Its own module because both the local phase and the warm pool stop workers, and the warm pool
must not import the local phase (and torch) where it only hands workers around.
"""

from __future__ import annotations

import ray


def kill_actors(actors: list) -> None:
    """Kill each actor, at once (its CPUs and GPUs are free again); one that is gone already is fine."""
    for actor in actors:
        try:
            ray.kill(actor)
        except Exception:  # noqa: BLE001 - dead already
            pass
