"""Subdomain workers kept started between jobs, so a job on a running service trains at once.

A worker's start is a process, ``import torch`` and the first optimizer step's lazy
imports: about three seconds here, on the path of every job's first epoch. The
service keeps a few started workers in a detached actor, ``WarmPool``, while it
has no job to run; the next job's driver takes them when it starts.

Why this shape:
- The workers belong to the pool actor (not to the service, which is no Ray
  driver, nor to a job, which ends), so they outlive the short job that fills
  the pool and wait for whichever driver comes next.
- Idle workers hold their CPUs (and GPUs) like any actor, so Ray's accounting
  stays true. So nothing waits on them: every ddray driver takes the whole pool
  when it starts, keeps the workers that fit its first phase and kills the rest
  (a Tune search or another resource shape frees them at once), and the service
  fills the pool only while it has no job running and does not start a job
  before the fill has ended.
- A driver kills the workers it took when it is done with them. One that dies
  first cannot: the pool holds an object the driver owns (its lease) and kills a
  taken worker once that object's owner is gone.

The fill runs as a short Ray job (``python -m ddray.orchestration.warm_pool fill``)
because the service talks to Ray only through the Jobs API.

A sweep (or a ``ddray.Session``) fills the pool differently: each of its runs hands its own
workers back at its end (:func:`hand_back`), and the next run, in the same process, takes them.
Those workers belong to that process and end with it, so the pool gives them to no other driver.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from typing import Any

import ray

from ddray.orchestration.actors import kill_actors

NAME = "ddray-warm-pool"
NAMESPACE = "ddray"


@dataclass
class _Idle:
    cpus: float
    gpus: float
    actor: Any
    giver: Any = None  # the lease ref of the driver that handed it back (its owner); None: the pool's own


def _mine(worker: _Idle, lease: list) -> bool:
    """Whether the driver of ``lease`` may train on ``worker``: the pool's own workers go to any
    driver; one a driver handed back (and owns: it ends with that driver) only to that driver."""
    return worker.giver is None or worker.giver == lease[0]


@ray.remote(num_cpus=0, max_restarts=0)
class WarmPool:
    """Started subdomain workers waiting for the next driver, and the ones it handed out."""

    def __init__(self) -> None:
        self._idle: list[_Idle] = []
        self._taken: list[tuple[Any, list]] = []  # (worker, [lease ref of the driver that took it])

    def fill(self, count: int, cpus: float, gpus: float) -> int:
        """Have ``count`` idle workers asking (cpus, gpus); returns how many there are (some may still start)."""
        from ddray.orchestration.local_phase import start_worker  # torch: in this process only, not the fill job's

        self._reap()
        keep = [w for w in self._idle if (w.cpus, w.gpus) == (cpus, gpus) and w.giver is None][:count]
        kill_actors([w.actor for w in self._idle if w not in keep])  # a driver's handed-back ones too: not the service's to give
        while len(keep) < count:
            keep.append(_Idle(cpus, gpus, start_worker(cpus, gpus, {})))
        self._idle = keep
        return len(keep)

    def take(self, cpus: float, gpus: float, count: int, lease: list) -> list:
        """Hand out up to ``count`` idle workers asking (cpus, gpus) and kill every other idle one.

        ``lease``: ``[ref]`` of an object the caller owns (in a list, so Ray passes the reference,
        not its value); the workers are killed when it is lost with its owner.
        """
        fit = [w for w in self._idle if (w.cpus, w.gpus) == (cpus, gpus) and _mine(w, lease)][: max(0, count)]
        kill_actors([w.actor for w in self._idle if w not in fit])  # another driver's too: nothing waits on idle workers
        self._idle = []
        self._taken += [(w.actor, lease) for w in fit]
        return [w.actor for w in fit]

    def adopt(self, workers: list, cpus: float, gpus: float, lease: list) -> int:
        """Keep ``workers`` (started, asking (cpus, gpus), done with a run) idle for the next run of
        the driver of ``lease``, which owns them; idle workers of another shape are killed.
        Returns how many are idle."""
        self._taken = [(actor, held) for actor, held in self._taken if actor not in workers]
        kill_actors([w.actor for w in self._idle if (w.cpus, w.gpus) != (cpus, gpus)])
        self._idle = [w for w in self._idle if (w.cpus, w.gpus) == (cpus, gpus)] + [_Idle(cpus, gpus, a, lease[0]) for a in workers]
        return len(self._idle)

    def drain(self) -> int:
        """Kill every idle worker (the service stops); returns how many there were."""
        count = len(self._idle)
        kill_actors([w.actor for w in self._idle])
        self._idle = []
        return count

    def status(self) -> dict:
        self._reap()
        return {"idle": len(self._idle), "taken": len(self._taken)}

    def _reap(self) -> None:
        """Forget taken workers that are dead, and kill those whose driver is gone."""
        alive = []
        for actor, lease in self._taken:
            try:
                ray.get(lease[0], timeout=5)
            except ray.exceptions.GetTimeoutError:
                alive.append((actor, lease))  # owner busy or far: look again next time
            except Exception:  # the driver that took it is gone (OwnerDiedError and friends)
                kill_actors([actor])
            else:
                if _alive(actor):
                    alive.append((actor, lease))
        self._taken = alive


def _alive(actor: Any) -> bool:
    try:
        ray.get(actor.__ray_ready__.remote(), timeout=5)
        return True
    except ray.exceptions.GetTimeoutError:
        return True
    except Exception:  # noqa: BLE001 - dead
        return False


def pool(create: bool = False) -> Any | None:
    """The cluster's pool (created when asked), or None when there is none."""
    if create:
        return WarmPool.options(name=NAME, namespace=NAMESPACE, lifetime="detached", get_if_exists=True).remote()
    try:
        return ray.get_actor(NAME, namespace=NAMESPACE)
    except ValueError:
        return None


_leases: list = []  # this driver's lease objects: alive as long as the driver is


def _lease() -> list:
    """``[ref]`` of an object this driver owns: the pool knows the driver by it, and that it is gone."""
    if not _leases:
        _leases.append(ray.put(b"lease"))
    return [_leases[0]]


def take_workers(cpus: float, gpus: float, count: int) -> list:
    """Every driver calls this when it starts: the pool's workers that fit (cpus, gpus), at most ``count``
    (0: none, and the idle ones are freed for this job's own processes); [] without a pool."""
    handle = pool()
    if handle is None:
        return []
    try:
        return ray.get(handle.take.remote(cpus, gpus, count, _lease()), timeout=30)
    except Exception:  # noqa: BLE001 - a pool that cannot answer is no pool; the job starts its own workers
        return []


def hand_back(workers: list, cpus: float, gpus: float) -> None:
    """A driver done with its subdomain workers leaves them idle in the cluster's pool (created if
    there is none) for its own next run (a sweep's, a ``ddray.Session``'s). They belong to this
    process and end with it, so the pool gives them to no other driver (one that starts meanwhile
    kills them, as it kills every idle worker it cannot use).

    Without waiting: the pool's first start is a new process, seconds at the end of a run. This
    process's next call to the pool (:func:`take_workers`, :func:`free_warm_workers`) runs after
    this one, as Ray runs one caller's calls to an actor in order.
    """
    if not workers:
        return
    try:
        pool(create=True).adopt.remote(list(workers), cpus, gpus, _lease())
    except Exception:  # noqa: BLE001 - no pool: the workers go, as without one
        kill_actors(workers)


def free_warm_workers() -> int:
    """Kill the pool's idle workers (a sweep that stops early, a service that stops); returns how
    many there were. Nothing to do without Ray or without a pool."""
    handle = pool() if ray.is_initialized() else None
    if handle is None:
        return 0
    try:
        return ray.get(handle.drain.remote(), timeout=30)
    except Exception:  # noqa: BLE001 - a pool that cannot answer holds no one we could free
        return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ddray.orchestration.warm_pool", description="fill or drain the warm worker pool")
    parser.add_argument("action", choices=["fill", "drain"])
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--cpus", type=float, default=1.0)
    parser.add_argument("--gpus", type=float, default=0.0)
    parser.add_argument("--address", default="auto")
    args = parser.parse_args(argv)
    ray.init(address=args.address, logging_level="WARNING", log_to_driver=False)
    if args.action == "fill":
        n = ray.get(pool(create=True).fill.remote(args.workers, args.cpus, args.gpus))
        print(f"warm pool: {n} worker(s) asking CPU {args.cpus:g}, GPU {args.gpus:g}")
    else:
        print(f"warm pool: drained {free_warm_workers()} idle worker(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
