"""The parallel phase: one Ray actor trains each subdomain's local CNN.

Design:
- The driver cuts every subdomain's pixels once and puts each into the object
  store on its own; an actor receives only its subdomain's reference (a
  zero-copy view of shared memory on the same node), so it never maps the
  pages of the whole data set. One reference to the whole data set works too.
- Actors are a pool sized to what the cluster can reach at once: the nodes
  that are up plus what the autoscaler may still start (at most one actor per
  subdomain, and never more busy processes on a node than its whole CPUs).
  On a cold autoscaling cluster the pool's pending actors are the demand that
  makes the autoscaler start nodes. Each actor is started once (one
  ``import torch``) and gets a subdomain only once it is up, so work never
  waits on a node that the autoscaler cannot (or not yet) start: whichever
  actor is ready takes the next subdomain. An actor is killed as soon as no
  work is left, so its resources (or its pending request) go back at once.
- A worker that dies (node lost, out of memory, killed) is replaced by a new
  actor and its subdomain is submitted again, up to ``max_retries`` times per
  subdomain; the new attempt resumes from the per-epoch checkpoint, so no
  finished epoch is trained twice. The driver counts the retries itself:
  Ray's own ``max_task_retries`` spends retries while a restarting actor is
  merely unreachable, and ran out within a second of a lost node.
"""

from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import ray
from ray.util.queue import Queue
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from ddray.decomposition import Subdomain
from ddray.errors import SubdomainFailed
from ddray.orchestration.actors import kill_actors
from ddray.orchestration.cluster import cluster_shape, feasible_capacity
from ddray.storage import checkpoint_location
from ddray.training.local import CudaUnavailable, LocalResult, cpu_threads, train_subdomain, warm_up
from ddray.training.loop import Callback
from ddray.training.spec import TrainingSpec


WAIT_NOTICE_S = 30.0  # first 'still waiting for workers' notice (then every 2 min)

WORKER_LOST = (
    ray.exceptions.RayActorError,
    ray.exceptions.WorkerCrashedError,
    ray.exceptions.NodeDiedError,
    ray.exceptions.ObjectLostError,
)


class QueueProgress(Callback):
    """Sends one event per epoch to the driver's progress queue."""

    def __init__(self, queue: Queue | None, subdomain: int, epochs: int, extra: dict | None = None):
        self.queue, self.subdomain, self.epochs, self.extra = queue, subdomain, epochs, extra or {}

    def send(self, event: dict) -> None:
        if self.queue is not None:
            try:
                self.queue.put_nowait({"subdomain": self.subdomain, "epochs": self.epochs, **self.extra, **event})
            except Exception:  # progress must never break training
                pass

    def on_epoch_end(self, epoch: int, metrics: dict[str, float], model: Any) -> None:
        self.send({"status": "running", **metrics})


@ray.remote
class SubdomainWorker:
    """A long-lived training process: imports torch once and trains many subdomains."""

    def __init__(self, cpus: float):
        import torch

        # its CPU share (whole CPUs, at least one), also when a GPU worker falls back to CPU
        torch.set_num_threads(cpu_threads(cpus))
        warm_up()

    def where(self) -> dict:
        """Where this worker runs and its memory (benchmarks show the data is not copied N times)."""
        ctx = ray.get_runtime_context()
        return {"node_id": ctx.get_node_id(), "pid": os.getpid(), "actor_id": ctx.get_actor_id(), **process_memory_mb()}

    def train(
        self,
        sub: Subdomain,
        arrays: Mapping[str, Any],
        spec: TrainingSpec,
        checkpoint: str,
        queue: Queue | None,
    ) -> tuple[LocalResult, dict]:
        """Train one subdomain; the weights travel back in the result, so no shared disk is needed."""
        progress = QueueProgress(queue, sub.index, spec.epochs)
        progress.send({"status": "started", "epoch": 0, "pid": os.getpid(), "node_id": ray.get_runtime_context().get_node_id()})
        with checkpoint_location(checkpoint) as (local_path, sync):
            result = train_subdomain(sub, arrays, spec, checkpoint_path=local_path, callbacks=[progress, sync])
        return result, self.where()

    def run(self, calls: list[Callable[[], Any]]) -> list:
        """Each call in turn, in this process: the driver's torch work after the local phase (the DNN
        fit, the parameter counts), where torch and its lazy imports are loaded already."""
        return [call() for call in calls]


@dataclass
class PoolStart:
    """Subdomain workers and the progress queue, started before the local phase (while the driver loads data).

    A worker's start (a process, ``import torch``, the first optimizer step's lazy imports) costs
    seconds; started here they overlap the driver's own work instead of delaying the first epoch.
    """

    cpus: float
    gpus: float
    queue: Any
    starting: dict  # where-ref -> actor, not known to be up yet
    warm: int = 0  # of them taken already started from the service's warm pool


def progress_queue() -> Queue:
    """The progress queue lives on the driver's node, so losing a worker node never loses it."""
    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=True)
    return Queue(actor_options={"num_cpus": 0, "scheduling_strategy": here})


def pool_size(tasks: int, slots: int, cpus: float, gpus: float) -> int:
    """Workers for ``tasks`` subdomains: never more busy processes than whole CPUs (fractional CPU
    shares still schedule, but more training processes than cores only add start-up and memory),
    counted on what the cluster can reach, autoscaler node types included."""
    return max(1, min(slots, tasks, max_busy_processes(cpus, gpus)))


def start_worker(cpus: float, gpus: float, starting: dict) -> Any:
    """Ask for one worker without waiting; it is entered in ``starting`` under the reference that
    resolves once it is up (and has warmed its imports)."""
    # SPREAD: use every node's GPUs/CPUs before packing a second worker onto one node
    worker = SubdomainWorker.options(num_cpus=cpus, num_gpus=gpus, max_restarts=0, scheduling_strategy="SPREAD").remote(cpus)
    starting[worker.where.remote()] = worker
    return worker


def start_pool(tasks: int, slots: int, cpus: float, gpus: float, warm: list | tuple = ()) -> PoolStart:
    """Start the workers ``run_local_phase`` will use for ``tasks`` subdomains, without waiting for them.

    ``warm``: workers asking (cpus, gpus) started earlier (the service's warm pool); they are
    used first, and only the rest is started here.
    """
    size = pool_size(tasks, slots, cpus, gpus)
    starting: dict = {worker.where.remote(): worker for worker in warm[:size]}
    kill_actors(list(warm[size:]))
    for _ in range(size - len(starting)):
        start_worker(cpus, gpus, starting)
    return PoolStart(cpus, gpus, progress_queue(), starting, warm=min(size, len(warm)))


@dataclass
class LocalTask:
    """A subdomain still to train: what, how, and where its per-epoch state lives."""

    sub: Subdomain
    spec: TrainingSpec
    checkpoint_path: str


def run_local_phase(
    tasks: list[LocalTask],
    data: ray.ObjectRef | Mapping[int, ray.ObjectRef],
    *,
    cpus: float,
    gpus: float,
    slots: int,
    max_retries: int,
    on_event: Callable[[dict], None],
    on_result: Callable[[LocalResult, dict], None],
    poll_s: float = 0.25,
    pool: PoolStart | None = None,
    on_worker: Callable[[dict], None] | None = None,
    keep: str = "none",
) -> LocalPhase:
    """Train every task on a pool of at most ``slots`` actors; results in task order.

    ``on_result`` gets each finished subdomain with its weights (``model_state``) and keeps it
    (the driver saves it in the run folder); the returned results no longer hold the weights.
    ``data``: one object-store reference to the whole data set, or one per subdomain index holding
    only that subdomain's arrays (:func:`~ddray.training.local.subdomain_arrays`; a worker then
    maps only its own pixels). ``pool``: workers already started for this phase
    (:func:`start_pool`); they are used, and the pool is filled up or trimmed to the size this
    phase needs. ``on_worker`` gets each worker's :meth:`SubdomainWorker.where` once it is up.
    ``keep``: which workers are not stopped but handed to the caller, who stops them: ``"none"``;
    ``"last"``, the last to finish (the driver aggregates on it; the others go as soon as nothing
    is left for them, with their CPUs); ``"all"``, every worker, the last to finish last (a sweep's
    next run trains on them: :func:`~ddray.orchestration.warm_pool.hand_back`).
    """
    if keep not in ("none", "last", "all"):
        raise ValueError(f"keep must be 'none', 'last' or 'all', not {keep!r}")
    if pool is not None and (pool.cpus, pool.gpus) != (cpus, gpus):
        raise ValueError(f"the pool was started for CPU {pool.cpus:g}, GPU {pool.gpus:g}, not CPU {cpus:g}, GPU {gpus:g}")
    if not tasks:
        discard_pool(pool)
        return LocalPhase([])
    size = pool_size(len(tasks), slots, cpus, gpus)
    queue = pool.queue if pool is not None else progress_queue()
    starting: dict[ray.ObjectRef, Any] = dict(pool.starting) if pool is not None else {}  # actors not up yet (a pending one may wait for the autoscaler)
    while len(starting) > size:  # started for more subdomains than are left
        _, extra = starting.popitem()
        ray.kill(extra)
    workers: list = list(starting.values())
    pending_tasks = list(tasks)
    running: dict[ray.ObjectRef, tuple[Any, LocalTask]] = {}
    results: dict[int, LocalResult] = {}
    attempts: dict[int, int] = {}
    kept: list = []  # idle workers kept for the caller (see ``keep``), the last to finish last
    handed: list = []
    start_failures = 0
    began = time.monotonic()
    next_notice = began + WAIT_NOTICE_S
    any_ready = False

    def add_worker() -> None:
        workers.append(start_worker(cpus, gpus, starting))

    def submit(worker) -> None:
        task = pending_tasks.pop(0)
        ref = worker.train.remote(task.sub, data[task.sub.index] if isinstance(data, Mapping) else data, task.spec, task.checkpoint_path, queue)
        running[ref] = (worker, task)

    def release(worker) -> None:
        workers.remove(worker)
        kill_actors([worker])  # give its CPU/GPU (or its pending request) back now

    def retire(worker) -> None:
        """No subdomain left for ``worker``: it goes now, and its CPU/GPU with it, unless ``keep``
        keeps it (``"last"``: the one that finishes when nothing else runs)."""
        if keep == "all" or (keep == "last" and not running and not pending_tasks):
            kept.append(worker)
        else:
            release(worker)

    def drain() -> None:
        while True:
            try:
                events = queue.get_nowait_batch(max(1, queue.size()))
            except Exception:
                return
            if not events:
                return
            for event in events:
                on_event(event)

    try:
        for _ in range(size - len(starting)):
            add_worker()
        while pending_tasks or running:
            if not running and not starting:  # every worker was lost before it could take work
                add_worker()
            done, _ = ray.wait(list(running) + list(starting), num_returns=1, timeout=poll_s)
            drain()
            now = time.monotonic()
            if starting and not any_ready and now >= next_notice:
                print(
                    f"[ddray] waiting {now - began:.0f} s for {len(starting)} subdomain worker(s) asking "
                    f"CPU {cpus:g}, GPU {gpus:g} each to start (an autoscaling cluster starts nodes for them; "
                    f"see `ray status` on the head)",
                    file=sys.stderr,
                    flush=True,
                )
                next_notice = now + 4 * WAIT_NOTICE_S
            for ref in done:
                if ref in starting:
                    worker = starting.pop(ref)
                    try:
                        where = ray.get(ref)
                    except (*WORKER_LOST, ray.exceptions.RayTaskError) as err:
                        workers.remove(worker)
                        start_failures += 1
                        if start_failures > max_retries + size:
                            raise SubdomainFailed(
                                f"subdomain workers could not start ({start_failures} attempts); "
                                f"last cause: {_short(err)}"
                            ) from None
                        if pending_tasks:
                            add_worker()
                        continue
                    any_ready = True
                    if on_worker is not None:
                        on_worker(where)
                    if pending_tasks:
                        submit(worker)
                    else:
                        retire(worker)
                    continue
                worker, task = running.pop(ref)
                try:
                    result, where = ray.get(ref)
                except WORKER_LOST as err:
                    index = task.sub.index
                    attempts[index] = attempts.get(index, 0) + 1
                    if attempts[index] > max_retries:
                        raise SubdomainFailed(
                            f"subdomain {index} failed: its worker died {attempts[index]} time(s) "
                            f"(resources.max_retries={max_retries}); last cause: {_short(err)}. "
                            f"Finished subdomains and checkpoints are kept; rerun with --resume to continue."
                        ) from None
                    on_event({"subdomain": index, "status": "retrying", "attempt": attempts[index], "cause": _short(err, 200)})
                    release(worker)
                    pending_tasks.insert(0, task)  # the next worker that is up resumes it from its checkpoint
                    if kept:  # an idle kept worker takes it at once
                        submit(kept.pop())
                    else:
                        add_worker()
                    continue
                except ray.exceptions.RayTaskError as err:
                    cause = getattr(err, "cause", None)
                    detail = f"{type(cause).__name__}: {cause}" if isinstance(cause, CudaUnavailable) else _short(err)
                    raise SubdomainFailed(f"subdomain {task.sub.index} failed: {detail}") from None
                on_event({"subdomain": task.sub.index, "status": "done", "test_accuracy": result.test_accuracy, **where})
                on_result(result, where)  # saves the weights
                result.model_state = None  # do not keep every model in driver memory
                results[task.sub.index] = result
                if pending_tasks:
                    submit(worker)
                else:
                    retire(worker)
        drain()
        # the phase ended well: the caller's now (with "all" also any still starting: warm soon, and paid for)
        handed = (list(starting.values()) if keep == "all" else []) + kept  # the last to finish last
    finally:
        kill_actors([w for w in workers if w not in handed] + [queue.actor])
    return LocalPhase([results[t.sub.index] for t in tasks], handed)


@dataclass
class LocalPhase:
    """What :func:`run_local_phase` did: each task's result, and the workers it kept (``keep``), the last to finish last."""

    results: list[LocalResult]
    workers: list = field(default_factory=list)


def discard_pool(pool: PoolStart | None) -> None:
    """Stop the workers and queue of a pool that is not needed after all."""
    if pool is None:
        return
    kill_actors([*pool.starting.values(), pool.queue.actor])


def max_busy_processes(cpus: float = 1.0, gpus: float = 0.0) -> int:
    """Busy workers asking (cpus, gpus) the reachable cluster should run at once: per node at most its whole CPUs.

    Reachable: the nodes that are up plus what the autoscaler may still start.
    """
    try:
        return max(1, feasible_capacity(cluster_shape(), cpus, gpus).busy)
    except Exception:  # infeasible requests are refused earlier (check_feasible); fall back to alive CPUs
        return max(1, int(sum(math.floor(n["Resources"].get("CPU", 0)) for n in ray.nodes() if n.get("Alive"))))


def _short(err: BaseException, limit: int = 600) -> str:
    text = str(err).strip().splitlines()
    tail = " ".join(line.strip() for line in text[-6:])
    return tail[-limit:]


def process_memory_mb() -> dict[str, float]:
    """Peak RSS, and private memory: RSS also counts the shared object-store pages a worker reads."""
    import resource

    out = {"peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
    try:
        fields = dict(line.split(":", 1) for line in open("/proc/self/smaps_rollup").read().splitlines()[1:])
        private_kb = sum(int(fields[k].split()[0]) for k in ("Private_Clean", "Private_Dirty"))
        out["private_mb"] = round(private_kb / 1024, 1)
    except (OSError, KeyError, ValueError):  # not Linux
        pass
    return out
