"""The parallel phase: one Ray actor trains each subdomain's local CNN.

Design:
- The data set is put into the object store once by the driver; every actor
  receives the same reference and slices its own subdomain (a zero-copy view
  of shared memory on the same node, then one copy of 1/N of the pixels).
- Actors are a pool sized to what the cluster can host at once (at most one
  per subdomain). Each actor is started once (one ``import torch``) and takes
  the next subdomain as soon as it is free; it is killed when no work is left,
  so its resources go back to the cluster at once.
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
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import ray
from ray.util.queue import Queue
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from ddray.decomposition import Subdomain
from ddray.errors import SubdomainFailed
from ddray.storage import checkpoint_location
from ddray.training.local import LocalResult, LocalSettings, save_local_model, train_subdomain
from ddray.training.loop import Callback


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

        torch.set_num_threads(max(1, int(cpus)))

    def where(self) -> dict:
        """Where this worker runs and its memory (benchmarks show the data is not copied N times)."""
        ctx = ray.get_runtime_context()
        return {"node_id": ctx.get_node_id(), "pid": os.getpid(), "actor_id": ctx.get_actor_id(), **process_memory_mb()}

    def train(
        self,
        sub: Subdomain,
        arrays: Mapping[str, Any],
        settings: LocalSettings,
        checkpoint: str,
        queue: Queue | None,
    ) -> tuple[LocalResult, dict]:
        """Train one subdomain; the weights travel back in the result, so no shared disk is needed."""
        progress = QueueProgress(queue, sub.index, settings.epochs)
        progress.send({"status": "started", "epoch": 0, "pid": os.getpid(), "node_id": ray.get_runtime_context().get_node_id()})
        with checkpoint_location(checkpoint) as (local_path, sync):
            result = train_subdomain(sub, arrays, settings, checkpoint_path=local_path, callbacks=[progress, sync])
        return result, self.where()


@dataclass
class LocalTask:
    sub: Subdomain
    settings: LocalSettings
    checkpoint_path: str
    model_path: str


def run_local_phase(
    tasks: list[LocalTask],
    data_ref: ray.ObjectRef,
    *,
    cpus: float,
    gpus: float,
    slots: int,
    max_retries: int,
    on_event: Callable[[dict], None],
    on_result: Callable[[LocalResult, dict], None],
    poll_s: float = 0.25,
) -> list[LocalResult]:
    """Train every task on a pool of at most ``slots`` actors; results in task order."""
    if not tasks:
        return []
    # the progress queue lives on the driver's node, so losing a worker node never loses it
    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=True)
    queue = Queue(actor_options={"num_cpus": 0, "scheduling_strategy": here})
    # never more busy processes than whole CPUs: fractional CPU shares still schedule,
    # but packing more training processes than cores only adds start-up and memory
    pool_size = max(1, min(slots, len(tasks), max_busy_processes()))
    # SPREAD: use every node's GPUs/CPUs before packing a second worker onto one node
    options = dict(num_cpus=cpus, num_gpus=gpus, max_restarts=0, scheduling_strategy="SPREAD")
    workers = [SubdomainWorker.options(**options).remote(cpus) for _ in range(pool_size)]
    pending_tasks = list(tasks)
    running: dict[ray.ObjectRef, tuple[Any, LocalTask]] = {}
    results: dict[int, LocalResult] = {}
    attempts: dict[int, int] = {}

    def submit(worker) -> None:
        task = pending_tasks.pop(0)
        ref = worker.train.remote(task.sub, data_ref, task.settings, task.checkpoint_path, queue)
        running[ref] = (worker, task)

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
        for worker in workers:
            if pending_tasks:
                submit(worker)
        while running:
            done, _ = ray.wait(list(running), num_returns=1, timeout=poll_s)
            drain()
            for ref in done:
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
                    workers.remove(worker)
                    worker = SubdomainWorker.options(**options).remote(cpus)
                    workers.append(worker)
                    pending_tasks.insert(0, task)
                    submit(worker)
                    continue
                except ray.exceptions.RayTaskError as err:
                    raise SubdomainFailed(f"subdomain {task.sub.index} failed: {_short(err)}") from None
                save_local_model(task.model_path, result)
                result.model_state = None  # written; do not keep every model in driver memory
                results[task.sub.index] = result
                on_event({"subdomain": task.sub.index, "status": "done", "test_accuracy": result.test_accuracy, **where})
                on_result(result, where)
                if pending_tasks:
                    submit(worker)
                else:
                    ray.kill(worker)  # give its CPU/GPU back now
        drain()
    finally:
        for worker in workers:
            try:
                ray.kill(worker)
            except Exception:
                pass
        try:
            ray.kill(queue.actor)
        except Exception:
            pass
    return [results[t.sub.index] for t in tasks]


def max_busy_processes() -> int:
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
