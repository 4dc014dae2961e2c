"""A running `ddray serve` keeps workers started between jobs: its jobs take them, nothing waits on them."""

from __future__ import annotations

import time

import httpx
import pytest

from service_doubles import Service, cleanup_state, tiny_job

pytestmark = [pytest.mark.ray, pytest.mark.cluster, pytest.mark.timeout(400)]


def wait_for(fn, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(0.25)
    raise TimeoutError(f"{what} not reached in {timeout:.0f} s (last: {last})")


def test_jobs_train_on_warm_workers_and_a_search_is_not_blocked_by_them(tmp_path):
    svc = Service(tmp_path / "state", tmp_path / "data", extra_args=["--ray-num-cpus", "2", "--ray-object-store-mb", "200"], warm_workers=None)
    (tmp_path / "data").mkdir()
    svc.start(timeout=150)
    try:
        def ray_health():
            return httpx.get(f"{svc.url}/healthz", headers=svc.headers, timeout=10).json()["ray"]

        def pool_full():
            ray = ray_health()
            return ray["warm_workers"] == 2 and ray["available"].get("CPU") == 0.0

        with svc.client() as c:
            wait_for(pool_full, 120, "two warm workers holding the head's 2 CPUs")

            def finished(job_id):
                return wait_for(lambda: c.get(f"/jobs/{job_id}").json()["status"] in ("succeeded", "failed", "cancelled") and c.get(f"/jobs/{job_id}").json(), 240, f"job {job_id} ends")

            first = c.post("/jobs", json={"config": tiny_job(epochs=1)}).json()["id"]
            assert finished(first)["status"] == "succeeded"
            assert c.get(f"/jobs/{first}/results").json()["workers"] == {"warm": 2}

            # the service fills its pool again once idle; a Tune search then frees the workers for its trials
            wait_for(pool_full, 120, "the pool filled again after the job")
            search = {**tiny_job(epochs=1), "tune": {"num_samples": 1, "space": {"lr": {"choice": [0.01]}}}}
            job = finished(c.post("/jobs", json={"config": search}).json()["id"])
            assert job["status"] == "succeeded", job.get("error")
    finally:
        svc.stop()
        cleanup_state(tmp_path / "state", svc.token)
