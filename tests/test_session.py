"""The embedded Ray a run starts for itself (ddray.orchestration.embedded_ray): what it runs, and that nothing of it is left."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from raycluster import processes_left

ROOT = Path(__file__).resolve().parents[1]

PROBE = """
import json, os
from ddray.orchestration.session import ray_session
from raycluster import processes_left

with ray_session(num_cpus=1) as up:
    up()
    import ray
    ours = processes_left(os.environ["RAY_TMPDIR"], wait_s=0)  # those running now
    print(json.dumps({"cpus": ray.cluster_resources().get("CPU"), "processes": ours}))
"""


@pytest.mark.ray
def test_embedded_ray_runs_without_api_server_and_monitor_and_leaves_nothing():
    """ddray's embedded Ray (include_dashboard=False) uses no dashboard, state or jobs API and has
    nothing to autoscale, so neither its API server (ray.init waited about a second for it) nor its
    autoscaler monitor runs; the GCS and raylet do, and the session's end stops every process."""
    ray_tmp = tempfile.mkdtemp(prefix="ddr-", dir="/tmp")  # short: socket paths are limited
    env = {**os.environ, "RAY_TMPDIR": ray_tmp, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")])}
    proc = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    seen = json.loads(proc.stdout.strip().splitlines()[-1])
    assert seen["cpus"] == 1.0
    commands = " | ".join(seen["processes"])
    assert "gcs_server" in commands and "raylet" in commands, commands
    assert "dashboard/dashboard.py" not in commands and "autoscaler" not in commands, commands
    assert "log_monitor.py" in commands, commands  # worker output still reaches the driver
    assert processes_left(ray_tmp) == []
    shutil.rmtree(ray_tmp, ignore_errors=True)


def test_the_start_shortcuts_still_find_what_they_replace_in_ray():
    """Each shortcut of ddray's embedded Ray falls back to Ray's own behaviour when Ray's private API
    changes (a Ray upgrade): this notices it, where a run would only get slower."""
    from ray._private import services
    from ray._private.node import Node

    from ddray.orchestration import embedded_ray

    before = (Node.start_api_server, Node.start_monitor, services.get_node)
    with embedded_ray._without_processes("start_api_server", "start_monitor"), embedded_ray._prompt_node_wait():
        assert Node.start_api_server is not before[0]
        assert Node.start_monitor is not before[1]
        assert services.get_node is not before[2]
    assert (Node.start_api_server, Node.start_monitor, services.get_node) == before
