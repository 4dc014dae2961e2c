"""Connecting to Ray and checking, before any work starts, that requests can be met.

Ray on its own waits forever for an actor no node can host; ddray refuses
such a job at once with a message that says which resource is missing.

What counts is what the cluster can *reach*: the nodes that are up plus the
nodes the autoscaler may still start (each node type up to its
``max_workers``, all together up to the cluster's ``max_workers``). A cloud
cluster that scales GPU workers from zero has no GPU yet when a job arrives;
such a job is feasible, and its pending actors are what makes the autoscaler
start the GPU nodes.

Where the node types come from (Ray 2.60): not from the GCS cluster config
(``ray._private.state.state.get_cluster_config()``), which the autoscaler that
``ray up`` and ``ray start --autoscaling-config`` run never writes (v1, the
default; v2 does not publish it either; tests/test_autoscaling.py checks it),
but from the autoscaler's own config file: the head node's autoscaler process (``.../autoscaler/_private/monitor.py`` or
``.../autoscaler/v2/monitor.py``) runs with ``--gcs-address=IP:PORT`` and
``--autoscaling-config=FILE``; ddray finds the process of its cluster's GCS
port and reads FILE (on the head itself, or through a small task pinned to
the head when the driver runs elsewhere).
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import ray

from ddray.errors import ResourceError

log = logging.getLogger(__name__)

UNLIMITED = 10**6  # "no cap" for node counts and slots


@dataclass(frozen=True)
class NodeResources:
    node_id: str
    cpus: float
    gpus: float


@dataclass(frozen=True)
class NodeType:
    """A node type the autoscaler may start; ``available``: how many more of it it may still start."""

    name: str
    cpus: float
    gpus: float
    available: int


@dataclass(frozen=True)
class ClusterShape:
    """What a job can reach: the nodes that are up, and what the autoscaler may still add."""

    nodes: tuple[NodeResources, ...]
    node_types: tuple[NodeType, ...] = ()
    max_new_nodes: int = UNLIMITED  # the cluster-wide max_workers minus the worker nodes already up
    source: str = ""  # where node_types came from (for messages)
    unknown_types: tuple[str, ...] = ()  # node types that declare no resources (cannot be counted)


@dataclass(frozen=True)
class Capacity:
    """How many workers asking (cpus, gpus) the reachable cluster hosts at once, and how many should be busy."""

    slots: int  # workers the reachable nodes can host at the same time
    busy: int  # at most one busy process per whole CPU of the nodes that host them
    nodes: tuple[NodeResources, ...] = field(default_factory=tuple)  # the reachable nodes counted


# ------------------------------------------------------------------ pure arithmetic


def slots_per_node(node: NodeResources, cpus: float, gpus: float) -> int:
    """How many workers asking (cpus, gpus) one node can host at the same time."""
    by_cpu = math.floor(node.cpus / cpus + 1e-9) if cpus > 0 else UNLIMITED
    by_gpu = math.floor(node.gpus / gpus + 1e-9) if gpus > 0 else UNLIMITED
    return max(0, min(by_cpu, by_gpu))


def reachable_nodes(shape: ClusterShape, cpus: float, gpus: float) -> list[NodeResources]:
    """The alive nodes plus the nodes the autoscaler may still start that suit (cpus, gpus) best.

    New nodes are picked by workers per node, respecting each type's remaining
    count and the cluster-wide cap (for a unit-weight budget this greedy
    choice maximises the slots).
    """
    out = list(shape.nodes)
    budget = max(0, shape.max_new_nodes)
    ranked = sorted(
        (t for t in shape.node_types if t.available > 0),
        key=lambda t: (slots_per_node(NodeResources("", t.cpus, t.gpus), cpus, gpus), t.cpus),
        reverse=True,
    )
    for t in ranked:
        node = NodeResources(f"autoscaler:{t.name}", t.cpus, t.gpus)
        if budget <= 0 or slots_per_node(node, cpus, gpus) == 0:
            break
        count = min(t.available, budget, 4096)  # more nodes than that never matter for a pool size
        out.extend([node] * count)
        budget -= count
    return out


def capacity(nodes: Sequence[NodeResources], cpus: float, gpus: float) -> Capacity:
    """Slots, and busy processes: never more on a node than its whole CPUs (at least one where it hosts any)."""
    slots = busy = 0
    for n in nodes:
        s = slots_per_node(n, cpus, gpus)
        if s:
            slots += s
            busy += min(s, max(1, math.floor(n.cpus + 1e-9)))
    return Capacity(min(slots, UNLIMITED), min(busy, UNLIMITED), tuple(nodes))


def check_feasible(
    cpus: float,
    gpus: float,
    nodes: Sequence[NodeResources] | None = None,
    *,
    node_types: Sequence[NodeType] = (),
    max_new_nodes: int = UNLIMITED,
) -> int:
    """Raise ResourceError unless some reachable node can host one worker; return the reachable slot count.

    Without ``nodes`` the running cluster is asked (alive nodes and the
    autoscaler's node types); with ``nodes`` (tests, benchmarks) only the given
    nodes and ``node_types`` count.
    """
    shape = cluster_shape() if nodes is None else ClusterShape(tuple(nodes), tuple(node_types), max_new_nodes)
    return feasible_capacity(shape, cpus, gpus).slots


def feasible_capacity(
    shape: ClusterShape, cpus: float, gpus: float, *, what: str = "a subdomain worker", workers: int = 1, request: str | None = None
) -> Capacity:
    """The reachable capacity for (cpus, gpus); ResourceError naming the missing resource when below ``workers``."""
    cap = capacity(reachable_nodes(shape, cpus, gpus), cpus, gpus)
    if cap.slots >= workers:
        return cap
    request = request or f"cpus_per_subdomain={cpus:g}, gpus_per_subdomain={gpus:g}"
    raise ResourceError(infeasible_message(shape, cpus, gpus, what=what, workers=workers, slots=cap.slots, request=request))


def infeasible_message(
    shape: ClusterShape, cpus: float, gpus: float, *, what: str, workers: int, slots: int, request: str
) -> str:
    candidates = [(n.cpus, n.gpus) for n in shape.nodes] + [(t.cpus, t.gpus) for t in shape.node_types if t.available > 0]
    if gpus > 0 and not any(g >= gpus - 1e-9 for _, g in candidates):
        missing = "GPU"
        best = max((g for _, g in candidates), default=0)
        why = f"no node{' or autoscaler node type' if shape.node_types else ''} has {gpus:g} GPU (the most any has: {best:g})"
        hint = "set resources.gpus_per_subdomain: 0 to train on CPU, or use a cluster with GPU nodes (--address; cluster.yaml)"
    elif not any(c >= cpus - 1e-9 for c, _ in candidates):
        missing = "CPU"
        best = max((c for c, _ in candidates), default=0)
        why = f"no node{' or autoscaler node type' if shape.node_types else ''} has {cpus:g} CPU (the most any has: {best:g})"
        hint = "lower resources.cpus_per_subdomain or add larger nodes"
    elif slots == 0:
        missing = "CPU and GPU on one node"
        why = f"no single node has both {cpus:g} CPU and {gpus:g} GPU"
        hint = "lower resources.cpus_per_subdomain, or add GPU nodes with more CPUs"
    else:
        missing = "capacity"
        why = f"the cluster can host only {slots} at once"
        hint = "lower resources.num_workers, or raise the node types' max_workers / join a larger cluster"
    have = ", ".join(f"node {n.node_id[:8]}: CPU {n.cpus:g}, GPU {n.gpus:g}" for n in shape.nodes) or "no alive nodes"
    if shape.node_types:
        have += "; autoscaler node types: " + ", ".join(
            f"{t.name} (CPU {t.cpus:g}, GPU {t.gpus:g}, up to {t.available} more)" for t in shape.node_types
        )
    else:
        have += "; no autoscaler node types"
    if shape.unknown_types:
        have += f"; node types without declared resources (not counted: add resources: to them): {', '.join(shape.unknown_types)}"
    need = f"{workers} x " if workers > 1 else ""
    return (
        f"missing resource: {missing}. No way to host {need}{what} asking for {request}: {why} ({have}); {hint}"
    )


def node_types_from_config(
    config: Mapping[str, Any], alive_workers: Mapping[str, int] | None = None, alive_worker_count: int = 0
) -> tuple[list[NodeType], int, list[str]]:
    """Node types from an autoscaler config (cluster.yaml format): (types, max_new_nodes, types without resources).

    ``alive_workers``: worker nodes already up per type (they count against the
    type's ``max_workers``); ``alive_worker_count``: all worker nodes up (they
    count against the cluster-wide ``max_workers``). Defaults follow Ray's
    ``fill_node_type_min_max_workers``: a type's ``max_workers`` defaults to the
    cluster's, the head type's to 0.
    """
    alive_workers = alive_workers or {}
    head_type = config.get("head_node_type")
    global_max = config.get("max_workers")
    types, unknown = [], []
    for name, spec in (config.get("available_node_types") or {}).items():
        spec = spec or {}
        default_max = 0 if name == head_type else (global_max if global_max is not None else UNLIMITED)
        max_count = spec.get("max_workers", default_max)
        max_count = UNLIMITED if max_count is None or max_count < 0 else int(max_count)
        if max_count == 0:
            continue
        resources = spec.get("resources")
        if not resources:
            unknown.append(name)
            continue
        available = max(0, max_count - int(alive_workers.get(name, 0)))
        types.append(NodeType(name, float(resources.get("CPU", 0)), float(resources.get("GPU", 0)), available))
    max_new = UNLIMITED if global_max is None or global_max < 0 else max(0, int(global_max) - alive_worker_count)
    return types, max_new, unknown


# ------------------------------------------------------------------ asking the running cluster


def alive_nodes() -> list[NodeResources]:
    return [
        NodeResources(n["NodeID"], float(n["Resources"].get("CPU", 0)), float(n["Resources"].get("GPU", 0)))
        for n in ray.nodes()
        if n.get("Alive")
    ]


def cluster_shape() -> ClusterShape:
    """The alive nodes and the node types the autoscaler may still start (none when not autoscaling)."""
    raw = [n for n in ray.nodes() if n.get("Alive")]
    nodes = tuple(NodeResources(n["NodeID"], float(n["Resources"].get("CPU", 0)), float(n["Resources"].get("GPU", 0))) for n in raw)
    config, source = autoscaler_config()
    if not config:
        return ClusterShape(nodes)
    workers = [n for n in raw if "node:__internal_head__" not in n["Resources"]]
    per_type = _alive_workers_per_type(workers, config)
    types, max_new, unknown = node_types_from_config(config, per_type, len(workers))
    return ClusterShape(nodes, tuple(types), max_new, source, tuple(unknown))


def autoscaling_node_types() -> list[tuple[NodeResources, int]]:
    """(resources, how many more the autoscaler may start) of each node type; empty when not autoscaling."""
    shape = cluster_shape()
    return [(NodeResources(f"autoscaler:{t.name}", t.cpus, t.gpus), t.available) for t in shape.node_types]


_CONFIG_TTL_S = 30.0
_config_cache: dict[str, tuple[float, tuple[dict | None, str]]] = {}


def autoscaler_config() -> tuple[dict | None, str]:
    """The autoscaler's cluster config (cluster.yaml format) and where it was read; (None, "") when not autoscaling.

    Cached for a few seconds per cluster: a job asks more than once (feasibility, pool size).
    """
    try:
        address = ray.get_runtime_context().gcs_address
    except Exception:  # not connected
        return None, ""
    cached = _config_cache.get(address)
    if cached and time.monotonic() - cached[0] < _CONFIG_TTL_S:
        return cached[1]
    found = _read_autoscaler_config(address)
    _config_cache[address] = (time.monotonic(), found)
    return found


def _read_autoscaler_config(address: str) -> tuple[dict | None, str]:
    head = next((n for n in ray.nodes() if n.get("Alive") and "node:__internal_head__" in n["Resources"]), None)
    port = int(address.rsplit(":", 1)[1])
    here = ray.util.get_node_ip_address()
    try:
        if head is None or head["NodeManagerAddress"] == here:
            found = read_autoscaler_config_file(port)
        else:  # the autoscaler runs on the head node: read its config there
            from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

            task = ray.remote(num_cpus=0, max_retries=0)(read_autoscaler_config_file).options(
                scheduling_strategy=NodeAffinitySchedulingStrategy(head["NodeID"], soft=False)
            )
            found = ray.get(task.remote(port), timeout=60)
    except Exception as err:  # never let an unreadable config break a job: count alive nodes only
        log.warning("could not read the autoscaler config (%s); counting alive nodes only", err)
        return None, ""
    if found is None:
        return None, ""
    path, config = found
    return config, f"autoscaler config {path}"


def read_autoscaler_config_file(gcs_port: int) -> tuple[str, dict] | None:
    """(path, config) of the autoscaler process of the GCS at ``gcs_port`` on this machine, or None."""
    import yaml

    proc = Path("/proc")
    if not proc.is_dir():
        return None
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            args = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        if not any(a.endswith(("autoscaler/_private/monitor.py", "autoscaler/v2/monitor.py")) for a in args):
            continue
        opts = dict(a[2:].split("=", 1) for a in args if a.startswith("--") and "=" in a)
        if not opts.get("autoscaling-config") or not opts.get("gcs-address", "").endswith(f":{gcs_port}"):
            continue
        path = os.path.expanduser(opts["autoscaling-config"])
        with open(path) as fh:
            return path, yaml.safe_load(fh) or {}
    return None


def _alive_workers_per_type(workers: list[dict], config: Mapping[str, Any]) -> dict[str, int]:
    """Worker nodes up per node type: by the autoscaler's own node-type map, a node-group label, or by shape."""
    mapping = _autoscaler_node_types()
    types = {name: spec or {} for name, spec in (config.get("available_node_types") or {}).items()}
    counts: dict[str, int] = {}
    for n in workers:
        name = mapping.get(n["NodeID"]) or mapping.get(n.get("NodeManagerAddress", "")) or (n.get("Labels") or {}).get("ray.io/node-group")
        if name not in types:
            shape = (float(n["Resources"].get("CPU", 0)), float(n["Resources"].get("GPU", 0)))
            name = next(
                (t for t, spec in types.items() if spec.get("resources")
                 and (float(spec["resources"].get("CPU", 0)), float(spec["resources"].get("GPU", 0))) == shape),
                None,
            )
        if name is not None:
            counts[name] = counts.get(name, 0) + 1
    return counts


def _autoscaler_node_types() -> dict[str, str]:
    """The autoscaler's own node id/ip -> node type map, from the status it publishes for `ray status`.

    The one private Ray API here: Ray 2.60 has no public call that returns the v1 autoscaler's
    report (``ray.autoscaler.sdk`` only requests resources; ``ray.util.state`` lists nodes without
    their type), so this reads the key ``ray status`` reads. Empty when it is missing or changes
    shape: then nodes are typed by their ``ray.io/node-group`` label or their shape.
    """
    try:
        import json

        from ray._private.ray_constants import DEBUG_AUTOSCALING_STATUS
        from ray.experimental.internal_kv import _internal_kv_get

        status = _internal_kv_get(DEBUG_AUTOSCALING_STATUS)
        return (json.loads(status).get("autoscaler_report", {}).get("node_type_mapping") or {}) if status else {}
    except Exception:
        return {}
