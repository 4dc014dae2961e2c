"""Connecting to Ray and checking, before any work starts, that requests can be met.

Ray on its own waits forever for an actor no node can host; ddray refuses
such a job at once with a message that says which resource is missing.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import ray

from ddray.errors import ResourceError


@dataclass(frozen=True)
class NodeResources:
    node_id: str
    cpus: float
    gpus: float


def alive_nodes() -> list[NodeResources]:
    return [
        NodeResources(n["NodeID"], float(n["Resources"].get("CPU", 0)), float(n["Resources"].get("GPU", 0)))
        for n in ray.nodes()
        if n.get("Alive")
    ]


def autoscaling_node_types() -> list[tuple[NodeResources, int]]:
    """(resources, max_count) of node types the autoscaler may still start (empty when not autoscaling).

    A cloud cluster that scales GPU workers from zero has no GPU node yet when a
    job arrives; such a job is feasible, not an error. Reads the cluster config
    the autoscaler publishes to the GCS (private Ray API; ray is pinned).
    """
    try:
        config = ray._private.state.state.get_cluster_config()
    except Exception:
        return []
    if config is None:
        return []
    types = []
    for group in config.node_group_configs:
        if group.max_count == 0:
            continue
        resources = NodeResources(f"autoscaler:{group.name}", float(group.resources.get("CPU", 0)), float(group.resources.get("GPU", 0)))
        types.append((resources, group.max_count if group.max_count > 0 else 10**6))
    return types


def slots_per_node(node: NodeResources, cpus: float, gpus: float) -> int:
    """How many workers asking (cpus, gpus) one node can host at the same time."""
    by_cpu = math.floor(node.cpus / cpus + 1e-9) if cpus > 0 else 10**6
    by_gpu = math.floor(node.gpus / gpus + 1e-9) if gpus > 0 else 10**6
    return max(0, min(by_cpu, by_gpu))


def check_feasible(cpus: float, gpus: float, nodes: list[NodeResources] | None = None) -> int:
    """Raise ResourceError unless some node can host one worker; return the cluster's slot count."""
    scalable = autoscaling_node_types() if nodes is None else []
    nodes = alive_nodes() if nodes is None else nodes
    slots = sum(slots_per_node(n, cpus, gpus) for n in nodes)
    slots += sum(min(count * slots_per_node(n, cpus, gpus), 10**6) for n, count in scalable)
    if slots == 0:
        have = ", ".join(f"node {n.node_id[:8]}: CPU {n.cpus:g}, GPU {n.gpus:g}" for n in nodes) or "no alive nodes"
        hint = (
            "set resources.gpus_per_subdomain: 0 to train on CPU, or join a cluster with GPUs (--address)"
            if gpus > 0 and not any(n.gpus >= gpus for n in nodes)
            else "lower resources.cpus_per_subdomain or add larger nodes"
        )
        raise ResourceError(
            f"no node in the Ray cluster can host a subdomain worker asking for "
            f"cpus_per_subdomain={cpus:g}, gpus_per_subdomain={gpus:g} ({have}); {hint}"
        )
    return slots


@contextmanager
def ray_session(address: str | None = None, *, num_cpus: int | None = None, num_gpus: int | None = None) -> Iterator[None]:
    """Join ``address`` or start an embedded local Ray; reuse (and keep) one that is already up."""
    if ray.is_initialized():
        yield
        return
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    kwargs: dict = {"logging_level": logging.WARNING, "log_to_driver": True}
    previous_sigterm = signal.getsignal(signal.SIGTERM)
    if address:
        ray.init(address=address, **kwargs)
    else:
        # address="local": always a new embedded Ray, never a stray cluster left on this machine
        ray.init(address="local", num_cpus=num_cpus, num_gpus=num_gpus, include_dashboard=False, **kwargs)
    if callable(previous_sigterm) and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, previous_sigterm)  # ray.init replaces it with a bare sys.exit
    try:
        yield
    finally:
        ray.shutdown()
