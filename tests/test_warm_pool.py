"""The warm worker pool: workers started before a job, taken by its driver, never left holding CPUs."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ddray.config import parse_config
from ddray.orchestration import warm_pool
from ddray.orchestration.driver import run

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.ray


def free_cpus(ray, expected: float, timeout: float = 60.0) -> float:
    """Available CPUs once they reach ``expected`` (killed actors give theirs back within a moment)."""
    deadline = time.monotonic() + timeout
    while True:
        free = ray.available_resources().get("CPU", 0.0)
        if free == expected or time.monotonic() > deadline:
            return free
        time.sleep(0.2)


def wait_dead(ray, actor, timeout: float = 60.0) -> bool:
    """True once calls to ``actor`` fail because it died (False if it still answers at the deadline)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            ray.get(actor.__ray_ready__.remote(), timeout=10)
        except ray.exceptions.RayActorError:
            return True
        except ray.exceptions.GetTimeoutError:
            pass
        time.sleep(0.2)
    return False


def tiny_config(grid: list[int], method: str):
    return parse_config({
        "dataset": {"source": "synthetic", "kind": "count", "samples": 160, "size": [8, 8]},
        "decomposition": {"grid": grid},
        "local_model": {"width": 0.25},
        "training": {"epochs": 1, "batch_size": 32},
        "aggregation": {"methods": [method]},
    })


@pytest.fixture()
def pool(ray_cluster):
    handle = warm_pool.pool(create=True)
    yield handle
    ray_cluster.get(handle.drain.remote())
    ray_cluster.kill(handle)
    assert free_cpus(ray_cluster, 2.0) == 2.0, "a test left workers holding CPUs"


def test_taken_workers_are_started_and_the_rest_freed(ray_cluster, pool):
    ray = ray_cluster
    assert ray.get(pool.fill.remote(2, 1.0, 0.0)) == 2
    assert free_cpus(ray, 0.0) == 0.0  # idle workers hold their CPUs, as any actor does

    taken = warm_pool.take_workers(1.0, 0.0, 1)
    assert len(taken) == 1
    where = ray.get(taken[0].where.remote(), timeout=60)
    assert where["pid"] > 0
    assert free_cpus(ray, 1.0) == 1.0  # the worker not taken was killed: its CPU is free for the job
    assert ray.get(pool.status.remote()) == {"idle": 0, "taken": 1}
    ray.kill(taken[0])
    assert wait_dead(ray, taken[0])  # ray.kill is asynchronous: ask the pool once Ray reports the worker dead
    assert ray.get(pool.status.remote()) == {"idle": 0, "taken": 0}  # dead workers are forgotten


def test_a_job_of_another_shape_frees_every_idle_worker(ray_cluster, pool):
    ray = ray_cluster
    ray.get(pool.fill.remote(2, 1.0, 0.0))
    assert warm_pool.take_workers(2.0, 0.0, 1) == []  # a job asking 2 CPUs per subdomain cannot use them
    assert free_cpus(ray, 2.0) == 2.0
    ray.get(pool.fill.remote(1, 1.0, 0.0))
    assert warm_pool.take_workers(1.0, 0.0, 0) == []  # a Tune search (count 0) takes none and frees all
    assert free_cpus(ray, 2.0) == 2.0


def test_workers_a_driver_handed_back_go_to_no_other_driver(ray_cluster, pool):
    """A sweep's idle workers end with the sweep's process: another driver must not train on them."""
    ray = ray_cluster
    ray.get(pool.fill.remote(1, 1.0, 0.0))
    mine = warm_pool.take_workers(1.0, 0.0, 1)
    warm_pool.hand_back(mine, 1.0, 0.0)
    assert ray.get(pool.status.remote()) == {"idle": 1, "taken": 0}
    code = (
        "import ray\n"
        f"ray.init(address={ray.get_runtime_context().gcs_address!r}, logging_level='ERROR')\n"
        "from ddray.orchestration import warm_pool\n"
        "print(len(warm_pool.take_workers(1.0, 0.0, 1)), flush=True)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.stdout.strip() == "0", out.stderr[-2000:]
    assert wait_dead(ray, mine[0])  # killed, as any idle worker a driver cannot use: its CPU is free for that driver
    assert ray.get(pool.status.remote()) == {"idle": 0, "taken": 0}

    ray.get(pool.fill.remote(1, 1.0, 0.0))  # nor does the service's fill count them as its own
    mine = warm_pool.take_workers(1.0, 0.0, 1)
    warm_pool.hand_back(mine, 1.0, 0.0)
    assert ray.get(pool.fill.remote(1, 1.0, 0.0)) == 1
    assert wait_dead(ray, mine[0])


def test_workers_of_a_driver_that_died_are_killed(ray_cluster, pool):
    ray = ray_cluster
    ray.get(pool.fill.remote(1, 1.0, 0.0))
    gcs = ray.get_runtime_context().gcs_address
    code = (
        "import os, ray\n"
        f"ray.init(address={gcs!r}, logging_level='ERROR')\n"
        "from ddray.orchestration import warm_pool\n"
        "taken = warm_pool.take_workers(1.0, 0.0, 1)\n"
        "print(len(taken), flush=True)\n"
        "os._exit(0)  # dies without killing the worker it took\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.stdout.strip() == "1", out.stderr[-2000:]
    assert free_cpus(ray, 1.0, timeout=5) == 1.0  # the orphan still holds its CPU ...
    # ... until a fill finds its driver gone (Ray learns of an owner's death asynchronously: a busy
    # machine may need a later fill, as the service does after its next job)
    deadline = time.monotonic() + 60
    ray.get(pool.fill.remote(0, 1.0, 0.0))
    while ray.get(pool.status.remote())["taken"] and time.monotonic() < deadline:  # status reaps as a fill does
        time.sleep(1)
    assert ray.get(pool.status.remote()) == {"idle": 0, "taken": 0}
    assert free_cpus(ray, 2.0) == 2.0


def test_a_run_trains_on_the_warm_workers(ray_cluster, pool, tmp_path):
    ray = ray_cluster
    ray.get(pool.fill.remote(2, 1.0, 0.0))  # returns while they start: wait until they are up, as a sweep's run leaves them
    started = warm_pool.take_workers(1.0, 0.0, 2)
    pids = {ray.get(w.where.remote(), timeout=120)["pid"] for w in started}
    assert len(pids) == 2
    warm_pool.hand_back(started, 1.0, 0.0)
    assert ray.get(pool.status.remote()) == {"idle": 2, "taken": 0}

    results = run(tiny_config([2, 2], "average"), tmp_path / "run")
    assert results["workers"]["warm"] == 2
    assert sum(results["workers"]["nodes"].values()) == 2  # the two warm workers ...
    progress = json.loads((tmp_path / "run" / "progress.json").read_text())
    assert {s["pid"] for s in progress["subdomains"].values()} <= pids  # ... trained every subdomain: no new ones
    assert ray.get(pool.status.remote()) == {"idle": 0, "taken": 0}  # the run killed what it took
    assert free_cpus(ray, 2.0) == 2.0


def test_a_run_without_a_pool_starts_its_own_workers(ray_cluster, tmp_path):
    assert warm_pool.pool() is None
    workers = run(tiny_config([1, 2], "vote"), tmp_path / "run")["workers"]
    assert workers["warm"] == 0 and sum(workers["nodes"].values()) >= 1


def test_runs_of_a_python_session_train_on_the_workers_of_the_run_before(ray_cluster, pool, tmp_path):
    import ddray

    with ddray.Session() as s:  # joins the test's Ray (already up), which it leaves running
        first = s.run(tiny_config([2, 2], "average").model_dump(mode="json"), str(tmp_path / "a"))
        second = s.run(tiny_config([2, 2], "vote"), str(tmp_path / "b"))
        assert ray_cluster.get(pool.status.remote())["idle"] == 2  # between runs: the second run's, for a third
    assert (first["workers"]["warm"], second["workers"]["warm"]) == (0, 2)
    assert ray_cluster.get(pool.status.remote()) == {"idle": 0, "taken": 0}  # the session's end stopped them
    assert free_cpus(ray_cluster, 2.0) == 2.0
    with pytest.raises(RuntimeError, match="with ddray.Session"):
        s.run(tiny_config([2, 2], "vote"), str(tmp_path / "c"))
