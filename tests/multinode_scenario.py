"""Multi-node scenarios on one machine, run as a separate process by test_multinode.py.

A ``ray.cluster_utils.Cluster`` has its own head and worker raylets, which
cannot share a process with the test session's single-node Ray; so the test
starts this script and reads the JSON it prints last.

    python tests/multinode_scenario.py spread OUT_DIR
    python tests/multinode_scenario.py node-loss OUT_DIR
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path

os.environ.setdefault("DDRAY_PLAIN_PROGRESS", "1")

import ray  # noqa: E402
from ray.cluster_utils import Cluster  # noqa: E402

from ddray.config import parse_config  # noqa: E402
from ddray.orchestration.driver import run  # noqa: E402


def config(out: Path, epochs: int) -> dict:
    return {
        "dataset": {"source": "synthetic", "kind": "count", "samples": 320, "size": [16, 16]},
        "decomposition": {"grid": [2, 2], "overlap": 0},
        "local_model": {"name": "small_cnn", "width": 0.25},
        "training": {"epochs": epochs, "batch_size": 32, "lr": 0.01},
        "aggregation": {"methods": ["dnn", "average"], "dnn": {"hidden": [16], "epochs": 20, "lr": 0.01}},
        # half a (logical) GPU per subdomain: two subdomains share each worker node's GPU
        "resources": {"cpus_per_subdomain": 0.5, "gpus_per_subdomain": 0.5, "max_retries": 3},
        "storage": str(out / "shared"),  # the folder every node reaches
    }


def main() -> None:
    scenario, out = sys.argv[1], Path(sys.argv[2])
    out.mkdir(parents=True, exist_ok=True)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    workers = [cluster.add_node(num_cpus=1, num_gpus=1) for _ in range(2)]
    if scenario == "node-loss":
        workers.append(cluster.add_node(num_cpus=1, num_gpus=1))  # a spare that takes over
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, logging_level="WARNING")
    head_id = ray.get_runtime_context().get_node_id()
    report: dict = {"head": head_id, "workers": [w.node_id for w in workers]}
    try:
        run_scenario(scenario, out, cluster, workers, report)
    finally:
        ray.shutdown()
        cluster.shutdown()
    print("SCENARIO-RESULT " + json.dumps(report))


def run_scenario(scenario: str, out: Path, cluster: Cluster, workers: list, report: dict) -> None:
    # node-loss: long enough that the kill lands mid-training however fast the machine is
    cfg = parse_config(config(out, epochs=3 if scenario == "spread" else 30))

    if scenario == "spread":
        results = run(cfg, out / "run")
    else:
        outcome: dict = {}
        thread = threading.Thread(target=lambda: outcome.setdefault("results", run(cfg, out / "run")))
        thread.start()
        victim = None
        deadline = time.time() + 240
        while victim is None and time.time() < deadline and thread.is_alive():
            time.sleep(0.2)
            try:
                subs = json.loads((out / "run" / "progress.json").read_text())["subdomains"]
            except (FileNotFoundError, json.JSONDecodeError, KeyError):
                continue
            for key, entry in subs.items():
                early = 2 <= entry.get("epoch", 0) <= entry.get("epochs", 0) // 2  # the worker cannot have moved on yet
                if entry.get("status") == "running" and early and entry.get("node_id") in report["workers"]:
                    victim = (int(key), entry["node_id"], entry["pid"])
                    break
        if victim is None:
            thread.join()
            raise SystemExit("no subdomain was caught between epochs 2 and 15 on a worker node")
        subdomain, node_id, pid = victim
        node = next(w for w in workers if w.node_id == node_id)
        os.kill(pid, 9)  # the node's processes die with it (a worker would otherwise outlive its raylet briefly)
        cluster.remove_node(node, allow_graceful=False)
        report["killed_node"], report["victim_subdomain"] = node_id, subdomain
        thread.join(timeout=400)
        results = outcome["results"]

    report["local"] = results["local"]
    report["worker_nodes"] = results["workers"]["nodes"]
    report["aggregation"] = results["aggregation"]
    report["state_files"] = sorted(p.name for p in (out / "shared").rglob("*.ckpt"))


if __name__ == "__main__":
    main()
