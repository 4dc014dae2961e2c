"""Autoscaling-aware sizing: what the cluster can reach, not only what is up.

Unit tests feed synthetic nodes and node types to the pure functions. The
cluster tests start a real cold autoscaling cluster on this machine with
Ray's fake multi-node provider (v1 autoscaler, the one ``ray up`` runs): a
head of 1 CPU / 0 GPU and a worker type {CPU 2, GPU 2} (logical GPUs) with
min_workers 0, max_workers 1. The head is ``ray start --head
--autoscaling-config`` in its own process session with a private temp dir;
the fake worker nodes are processes the autoscaler starts in that session.
Teardown kills exactly those processes (session, temp dir, environment
marker), never the ray CLI's stop command.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from ray.autoscaler._private.fake_multi_node.node_provider import FAKE_HEAD_NODE_ID

from ddray.config import parse_config
from ddray.errors import ResourceError
from ddray.orchestration.cluster import (
    ClusterShape,
    NodeResources,
    NodeType,
    check_feasible,
    feasible_capacity,
    node_types_from_config,
    reachable_nodes,
)
from ddray.orchestration.train_jobs import check_baselines_feasible
from raycluster import RAY, LocalRayCluster, free_port

HEAD = NodeResources("h" * 16, cpus=1, gpus=0)
GPU_TYPE = NodeType("gpu_worker", cpus=2, gpus=2, available=1)


# ------------------------------------------------------------------ pure functions (no Ray)


def test_cold_cluster_counts_what_the_autoscaler_can_start():
    assert check_feasible(1, 0.5, [HEAD], node_types=[GPU_TYPE]) == 2  # on the GPU node it may start
    shape = ClusterShape((HEAD,), (GPU_TYPE,))
    assert feasible_capacity(shape, 1, 0.5).busy == 2  # pool size: two busy processes on that node's 2 CPUs
    assert feasible_capacity(shape, 0.25, 0.25).busy == 2  # 8 slots, still at most one busy process per whole CPU
    # CPU work: the head's CPU plus the node type's
    assert feasible_capacity(shape, 1, 0).slots == 3 and feasible_capacity(shape, 1, 0).busy == 3


def test_pool_respects_type_max_and_cluster_max_workers():
    """A 4x4 grid on a cold CPU cluster: the head's 2 CPUs plus at most max_workers nodes."""
    head = NodeResources("h" * 16, cpus=2, gpus=0)
    cpu4 = NodeType("cpu4", cpus=4, gpus=0, available=3)
    cpu8 = NodeType("cpu8", cpus=8, gpus=0, available=1)
    assert feasible_capacity(ClusterShape((head,), (cpu4,)), 1, 0).busy == 2 + 3 * 4
    assert feasible_capacity(ClusterShape((head,), (cpu4,), max_new_nodes=2), 1, 0).busy == 2 + 2 * 4
    # the biggest nodes first: one cpu8 (its max) then cpu4 within the cluster-wide cap
    nodes = reachable_nodes(ClusterShape((head,), (cpu4, cpu8), max_new_nodes=2), 1, 0)
    assert sorted(n.cpus for n in nodes) == [2, 4, 8]
    # types that cannot host the request are never counted
    assert feasible_capacity(ClusterShape((head,), (cpu8, GPU_TYPE)), 1, 1).slots == 2


def test_node_types_from_a_cluster_config():
    config = {
        "max_workers": 3,
        "head_node_type": "head",
        "available_node_types": {
            "head": {"resources": {"CPU": 4, "GPU": 0}, "node_config": {}},
            "gpu": {"resources": {"CPU": 8, "GPU": 1}, "min_workers": 0, "max_workers": 2, "node_config": {}},
            "cpu": {"resources": {"CPU": 16}, "node_config": {}},  # max_workers defaults to the cluster's (3)
            "off": {"resources": {"CPU": 2}, "max_workers": 0, "node_config": {}},
            "auto": {"node_config": {"InstanceType": "g5.xlarge"}},  # resources left to the provider: not counted
        },
    }
    types, max_new, unknown = node_types_from_config(config)
    assert {(t.name, t.cpus, t.gpus, t.available) for t in types} == {("gpu", 8, 1, 2), ("cpu", 16, 0, 3)}
    assert max_new == 3 and unknown == ["auto"]
    # one gpu node already up: one more of its type, two more in the cluster
    types, max_new, _ = node_types_from_config(config, {"gpu": 1}, 1)
    assert {t.name: t.available for t in types} == {"gpu": 1, "cpu": 3} and max_new == 2


def test_baselines_feasibility_counts_autoscaler_node_types():
    config = parse_config(
        {
            "dataset": {"source": "digits"},
            "decomposition": {"grid": [2, 2]},
            "resources": {"cpus_per_subdomain": 1, "gpus_per_subdomain": 0.5, "num_workers": 2},
            "compare": ["global"],
        }
    )
    # a Train worker takes one whole GPU: the GPU type's 2 GPUs host both workers
    check_baselines_feasible(config, ClusterShape((HEAD,), (GPU_TYPE,)))
    with pytest.raises(ResourceError, match="missing resource: GPU"):
        check_baselines_feasible(config, ClusterShape((HEAD,)))
    small = NodeType("gpu1", cpus=4, gpus=1, available=1)
    with pytest.raises(ResourceError, match="can host only 1"):
        check_baselines_feasible(config, ClusterShape((HEAD,), (small,)))
    check_baselines_feasible(config, ClusterShape((HEAD,), (NodeType("gpu1", cpus=4, gpus=1, available=2),)))


def test_infeasible_gpu_request_on_cpu_only_cluster_fails_naming_gpu():
    cpu_nodes = [HEAD, NodeResources("w" * 16, cpus=8, gpus=0)]
    with pytest.raises(ResourceError) as err:
        check_feasible(1, 0.5, cpu_nodes)  # not autoscaling: no node types
    text = str(err.value)
    assert text.startswith("missing resource: GPU") and "no autoscaler node types" in text
    assert "gpus_per_subdomain: 0" in text  # the fix
    # autoscaling, but no node type has enough GPUs per node
    with pytest.raises(ResourceError, match=r"missing resource: GPU.*has 4 GPU \(the most any has: 2\)"):
        check_feasible(1, 4, [HEAD], node_types=[GPU_TYPE])
    with pytest.raises(ResourceError, match="missing resource: GPU"):  # the type is used up
        check_feasible(1, 0.5, [HEAD], node_types=[NodeType("gpu_worker", 2, 2, available=0)])


# ------------------------------------------------------------------ a real cold autoscaling cluster

START_TIMEOUT_S = 120
JOB_TIMEOUT_S = 300


class FakeAutoscalingCluster(LocalRayCluster):
    """A cold head (1 CPU, no GPU) whose autoscaler (Ray's fake provider) may start one GPU node."""

    def __init__(self) -> None:
        super().__init__(head_cpus=1, head_gpus=0)
        self.config_path = Path(self.temp_dir) / "autoscaler.yaml"

    def config(self) -> dict:
        mib100 = 100 * 1024 * 1024
        return {
            "cluster_name": "ddray-autoscaling-test",
            "max_workers": 1,
            "provider": {
                "type": "fake_multinode",
                "gcs_address": self.address,  # the provider's default would be port 6379
                "use_node_id_as_ip": True,
                "disable_node_updaters": True,
                "disable_launch_config_check": True,
            },
            "available_node_types": {
                "ray.head.default": {"resources": {"CPU": 1, "GPU": 0}, "node_config": {}, "max_workers": 0},
                "gpu_worker": {
                    "resources": {"CPU": 2, "GPU": 2, "object_store_memory": mib100},
                    "node_config": {},
                    "min_workers": 0,
                    "max_workers": 1,
                },
            },
            "head_node_type": "ray.head.default",
            "auth": {},
            "upscaling_speed": 1.0,
            "idle_timeout_minutes": 5,
            "docker": {},
            "initialization_commands": [],
            "setup_commands": [],
            "head_setup_commands": [],
            "worker_setup_commands": [],
            "head_start_ray_commands": [],
            "worker_start_ray_commands": [],
            "file_mounts": {},
            "cluster_synced_files": [],
            "file_mounts_sync_continuously": False,
            "rsync_exclude": [],
            "rsync_filter": [],
        }

    def start(self) -> None:
        self.config_path.write_text(yaml.safe_dump(self.config()))
        cmd = [
            RAY, "start", "--head", "--port", str(self.port), "--node-ip-address", "127.0.0.1",
            "--num-cpus", "1", "--num-gpus", "0", "--temp-dir", self.temp_dir,
            f"--autoscaling-config={self.config_path}",
            "--dashboard-host", "127.0.0.1", "--dashboard-port", str(free_port()),
            "--ray-client-server-port", str(free_port()), "--dashboard-agent-listen-port", str(free_port()),
            "--object-store-memory", str(100 * 1024 * 1024), "--disable-usage-stats",
        ]
        env = {**self.env, "RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1"}
        # its own session: the head's daemons, the autoscaler and the fake nodes it starts all stay in it
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
        self.session = proc.pid
        try:
            out, _ = proc.communicate(timeout=START_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise AssertionError(f"ray start --head did not return within {START_TIMEOUT_S} s")
        assert proc.returncode == 0, f"ray start --head failed ({proc.returncode}):\n{out[-3000:]}"


@pytest.fixture(scope="module")
def autoscaling_cluster():
    cluster = FakeAutoscalingCluster()
    try:
        cluster.start()
        yield cluster
    finally:
        left = cluster.stop()
        assert not left, "processes of the test cluster still alive: " + "; ".join(
            Path(f"/proc/{p}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")[:200] for p in left if Path(f"/proc/{p}").exists()
        )


PROBE = """
import json, ray
from ddray.errors import ResourceError
from ddray.orchestration import cluster as c
ray.init(address=%r, logging_level="ERROR")
shape = c.cluster_shape()
port = int(ray._private.worker.global_worker.gcs_client.address.rsplit(":", 1)[1])
head = [n["NodeID"] for n in ray.nodes() if n["Alive"] and "node:__internal_head__" in n["Resources"]][0]
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
remote = ray.remote(num_cpus=0)(c.read_autoscaler_config_file).options(
    scheduling_strategy=NodeAffinitySchedulingStrategy(head, soft=False))
path, config = ray.get(remote.remote(port), timeout=60)
out = {
    "gcs_cluster_config": ray._private.state.state.get_cluster_config() is not None,
    "alive": [[n.cpus, n.gpus] for n in shape.nodes],
    "types": [[t.name, t.cpus, t.gpus, t.available] for t in shape.node_types],
    "max_new": shape.max_new_nodes,
    "source": shape.source,
    "slots": c.check_feasible(1, 0.5),
    "remote_types": sorted(config["available_node_types"]),
    "head": head,
}
try:
    c.check_feasible(1, 4)
except ResourceError as err:
    out["infeasible"] = str(err)
print("PROBE " + json.dumps(out))
"""


@pytest.mark.cluster
@pytest.mark.ray
def test_cold_cluster_reads_the_autoscaler_node_types(autoscaling_cluster):
    proc = autoscaling_cluster.python(PROBE % autoscaling_cluster.address)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("PROBE ")]
    assert proc.returncode == 0 and lines, f"probe failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    probe = json.loads(lines[-1][6:])
    assert probe["gcs_cluster_config"] is False  # Ray 2.60's autoscaler does not publish it: why ddray reads the file
    assert probe["alive"] == [[1.0, 0.0]] and probe["head"] == FAKE_HEAD_NODE_ID  # cold: only the head
    assert probe["types"] == [["gpu_worker", 2.0, 2.0, 1]] and probe["max_new"] == 1
    assert probe["source"] == f"autoscaler config {autoscaling_cluster.config_path}"
    assert probe["slots"] == 2  # two 0.5-GPU, 1-CPU workers on the GPU node the autoscaler may start
    assert probe["remote_types"] == ["gpu_worker", "ray.head.default"]  # also readable from a task on the head
    assert probe["infeasible"].startswith("missing resource: GPU")


@pytest.mark.cluster
@pytest.mark.ray
def test_gpu_job_on_cold_cluster_scales_up_and_trains_there(autoscaling_cluster, tmp_path):
    config = {
        "dataset": {"source": "synthetic", "kind": "count", "samples": 240, "size": [16, 16]},
        "decomposition": {"grid": [2, 2], "overlap": 0},
        "local_model": {"name": "small_cnn", "width": 0.25},
        "training": {"epochs": 2, "batch_size": 32, "lr": 0.01},
        "aggregation": {"methods": ["dnn", "average"], "dnn": {"hidden": [16], "epochs": 10, "lr": 0.01}},
        "resources": {"cpus_per_subdomain": 1, "gpus_per_subdomain": 0.5},
    }
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(config))
    out = tmp_path / "run"
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "ddray", "run", str(tmp_path / "job.yaml"), "--output", str(out), "--address", autoscaling_cluster.address],
            env={**autoscaling_cluster.env, "DDRAY_PLAIN_PROGRESS": "1"},
            capture_output=True,
            text=True,
            timeout=JOB_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired as err:
        raise AssertionError(
            f"the job did not finish within {JOB_TIMEOUT_S} s (did the autoscaler start the GPU node?)\n"
            f"{(err.stderr or b'')[-3000:]!r}"
        ) from None
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"ddray run failed ({proc.returncode}):\n{log[-4000:]}"
    results = json.loads((out / "results.json").read_text())
    nodes = {entry["node_id"] for entry in results["local"]}
    head_id = FAKE_HEAD_NODE_ID  # the fake provider's fixed head node id (the probe test checks it)
    assert len(results["local"]) == 4 and head_id not in nodes and len(nodes) == 1, nodes  # all on the launched GPU node
    assert [entry["device"] for entry in results["local"]] == ["cpu"] * 4  # logical GPUs: trained on CPU, and said so
    assert "asked for 0.5 GPU but torch.cuda.is_available() is False" in log
