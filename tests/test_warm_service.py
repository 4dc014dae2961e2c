"""A running `ddray serve` keeps workers started between jobs: its jobs take them, nothing waits on them."""

from __future__ import annotations

import httpx
import pytest

from service_doubles import Service, cleanup_state, tiny_job, wait_for

pytestmark = [pytest.mark.ray, pytest.mark.cluster, pytest.mark.timeout(600)]


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
            # the first fill is the new head's first Ray job: under load its job agent can take over a minute
            wait_for(pool_full, 240, what="two warm workers holding the head's 2 CPUs")

            def finished(job_id):
                def ended():
                    job = c.get(f"/jobs/{job_id}").json()
                    return job if job["status"] in ("succeeded", "failed", "cancelled") else None

                return wait_for(ended, 240, what=f"job {job_id} ends")

            first = c.post("/jobs", json={"config": tiny_job(epochs=1)}).json()["id"]
            assert finished(first)["status"] == "succeeded"
            assert c.get(f"/jobs/{first}/results").json()["workers"]["warm"] == 2

            # the service fills its pool again once idle; a Tune search then frees the workers for its trials
            wait_for(pool_full, 120, what="the pool filled again after the job")
            search = {**tiny_job(epochs=1), "tune": {"num_samples": 1, "space": {"lr": {"choice": [0.01]}}}}
            job = finished(c.post("/jobs", json={"config": search}).json()["id"])
            assert job["status"] == "succeeded", job.get("error")
    finally:
        svc.stop()
        cleanup_state(tmp_path / "state", svc.token)
