"""The job service for real: ``ddray serve`` on 127.0.0.1, real HTTP, SQLite, a local Ray head, real jobs.

One service for the module (its Ray head has 2 CPUs); the last test kills it
and starts a new one on the same state dir to check what a restart keeps.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import httpx
import numpy as np
import pytest

from api.cluster import process_cmdline
from api.runner import STOPPED
from api.store import JobStore
from service_doubles import Service, cleanup_state, tiny_job, wait_for

pytestmark = [pytest.mark.ray, pytest.mark.cluster, pytest.mark.timeout(240)]  # a real service with its own Ray head; jobs run on Ray

FINAL = ("succeeded", "failed", "cancelled")


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    return root


@pytest.fixture(scope="module")
def svc(tmp_path_factory, data_root):
    state = tmp_path_factory.mktemp("state")
    service = Service(state, data_root, extra_args=["--ray-num-cpus", "2", "--ray-object-store-mb", "200"], env={"DDRAY_CANCEL_GRACE_S": "5"})
    service.start(timeout=150)
    yield service
    service.stop()
    cleanup_state(state, service.token)  # in case a test failed half-way through a kill


def cli(svc: Service, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "DDRAY_URL": svc.url, "DDRAY_API_TOKEN": svc.token}
    return subprocess.run([sys.executable, "-m", "ddray", *args], env=env, capture_output=True, text=True, timeout=120)


def cpus(svc: Service) -> tuple[float, float]:
    ray = httpx.get(f"{svc.url}/healthz", headers=svc.headers, timeout=10).json()["ray"]
    return ray["available"].get("CPU", 0.0), ray["total"].get("CPU", 0.0)


def test_auth_over_real_http(svc):
    assert httpx.get(f"{svc.url}/jobs").status_code == 401
    assert httpx.get(f"{svc.url}/jobs", headers={"Authorization": "Bearer not-the-token-000000"}).status_code == 401
    assert httpx.post(f"{svc.url}/jobs", json={"config": tiny_job()}).status_code == 401
    assert httpx.get(f"{svc.url}/healthz").status_code == 200
    with svc.client() as c:
        assert c.get("/jobs").status_code == 200


def test_path_escapes_over_real_http(svc, data_root, tmp_path):
    outside = tmp_path / "secret.npz"
    np.savez(outside, x=np.zeros((2, 1, 16, 16)), y=np.zeros(2))
    (data_root / "escape.npz").symlink_to(outside)
    with svc.client() as c:
        before = c.get("/jobs").json()["total"]
        for path in ("../secret.npz", str(outside), "/etc/passwd", "escape.npz"):
            r = c.post("/jobs", json={"config": tiny_job(source="npz", path=path)})
            assert r.status_code == 422, (path, r.text)
            assert r.json()["detail"][0]["loc"][-2:] == ["dataset", "path"]
        assert c.get("/jobs").json()["total"] == before


def test_full_lifecycle_submit_watch_results_predict(svc, tmp_path):
    EPOCHS = 40  # a few seconds of training: progress.json is rewritten every 0.5 s
    cfg = tmp_path / "job.yaml"
    import yaml

    cfg.write_text(yaml.safe_dump(tiny_job(epochs=EPOCHS)))
    submitted = cli(svc, "submit", str(cfg), "--name", "lifecycle")
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.strip()
    seen_status, seen_epochs, seen_phases = [], set(), set()
    with svc.client() as c:
        deadline = time.monotonic() + 150
        while time.monotonic() < deadline:
            job = c.get(f"/jobs/{job_id}").json()
            if not seen_status or seen_status[-1] != job["status"]:
                seen_status.append(job["status"])
            seen_phases.add(job["phase"])
            seen_epochs.update(s["epoch"] for s in job["subdomains"] if s.get("epoch") is not None)
            if job["status"] in FINAL:
                break
            time.sleep(0.2)
        assert job["status"] == "succeeded", (job, c.get(f"/jobs/{job_id}/logs").text[-3000:])
        assert seen_status[-1] == "succeeded" and "running" in seen_status
        assert max(seen_epochs) == EPOCHS and any(0 < e < EPOCHS for e in seen_epochs), seen_epochs  # progress moved while we watched
        assert "local_training" in seen_phases
        assert job["error"] is None and job["timings"]["run_s"] > 0 and job["timings"]["results"]["total_wall"] > 0
        assert [s["status"] for s in job["subdomains"]] == ["done"] * 4
        assert all(s["best_val_accuracy"] is not None for s in job["subdomains"])

        results = c.get(f"/jobs/{job_id}/results").json()
        assert len(results["local"]) == 4 and "dnn" in results["aggregation"]
        png = c.get(f"/jobs/{job_id}/artifacts/accuracy.png")
        assert png.status_code == 200 and png.content[:8] == b"\x89PNG\r\n\x1a\n" and png.headers["content-type"] == "image/png"
        assert "test accuracy" in c.get(f"/jobs/{job_id}/artifacts/results.md").text
        logs = c.get(f"/jobs/{job_id}/logs").text
        assert "subdomain 3" in logs and f"epoch {EPOCHS}/{EPOCHS}" in logs
        tail = c.get(f"/jobs/{job_id}/logs", params={"lines": 2}).text
        assert len(tail.splitlines()) == 2 and logs.endswith(tail)

        x = np.random.default_rng(0).random((3, 1, 16, 16)).astype("float32")
        npz = tmp_path / "new.npz"
        np.savez(npz, x=x)
        r = c.post(f"/jobs/{job_id}/predict", files=[("files", ("new.npz", npz.read_bytes(), "application/octet-stream"))])
        assert r.status_code == 200, r.text
        pred = r.json()
        assert pred["count"] == 3 and {"dnn", "average", "vote", "dnn_confidence"} <= set(pred["records"][0])
        assert set(r["dnn"] for r in pred["records"]) <= set(results["dataset"]["class_names"])

    shown = cli(svc, "results", job_id, "--json")
    assert shown.returncode == 0 and json.loads(shown.stdout)["aggregation"] == results["aggregation"]
    listed = cli(svc, "status")
    assert listed.returncode == 0 and job_id in listed.stdout


def test_queue_order_and_cancel_frees_ray_resources(svc):
    with svc.client() as c:
        long_a = c.post("/jobs", json={"name": "long-a", "config": tiny_job(epochs=5000)}).json()["id"]
        long_b = c.post("/jobs", json={"name": "long-b", "config": tiny_job(epochs=5000)}).json()["id"]

        def training():
            job = c.get(f"/jobs/{long_a}").json()
            return job["status"] == "running" and any((s.get("epoch") or 0) >= 1 for s in job["subdomains"])

        wait_for(training, 120, what="job a training")
        assert c.get(f"/jobs/{long_b}").json()["status"] == "queued"  # one at a time, in submission order
        available, total = wait_for(lambda: (lambda a, t: (a, t) if a < t else None)(*cpus(svc)), 30, what="CPUs in use")
        assert total == 2.0 and available < total

        cancelled = cli(svc, "cancel", long_b)  # queued: cancelled at once
        assert cancelled.returncode == 0 and "cancelled" in cancelled.stderr, cancelled.stderr
        assert c.get(f"/jobs/{long_b}").json()["status"] == "cancelled"
        r = c.post(f"/jobs/{long_a}/cancel")
        assert r.status_code == 202 and r.json()["status"] == "running"
        job = wait_for(lambda: (lambda j: j if j["status"] in FINAL else None)(c.get(f"/jobs/{long_a}").json()), 30, what="cancelled")
        assert job["status"] == "cancelled" and job["cancel_requested"] and job["phase"] == "cancelled"
        wait_for(lambda: cpus(svc)[0] == 2.0, 30, interval=0.5, what="Ray CPUs freed")
        assert c.get(f"/jobs/{long_b}").json()["status"] == "cancelled"


def test_a_job_over_its_time_limit_is_stopped_and_says_why(svc):
    config = tiny_job(epochs=5000)
    config["resources"] = {**config["resources"], "max_runtime_s": 8}
    with svc.client() as c:
        job_id = c.post("/jobs", json={"name": "too-long", "config": config}).json()["id"]
        job = wait_for(lambda: (lambda j: j if j["status"] in FINAL else None)(c.get(f"/jobs/{job_id}").json()), 120, what="stopped")
        assert job["status"] == "failed", job
        assert "time limit of 8 s (resources.max_runtime_s)" in job["error"], job["error"]
        wait_for(lambda: cpus(svc)[0] == 2.0, 30, interval=0.5, what="Ray CPUs freed")


def test_crash_of_the_service_reattaches_its_running_job(svc):
    """A crashed service leaves its local head and Ray jobs running; the next start adopts both."""
    with svc.client() as c:
        victim = c.post("/jobs", json={"name": "victim", "config": tiny_job(epochs=150)}).json()["id"]
        wait_for(lambda: any((s.get("epoch") or 0) >= 1 for s in c.get(f"/jobs/{victim}").json()["subdomains"]), 120, what="victim training")
        queued = c.post("/jobs", json={"name": "waiting", "config": tiny_job(epochs=5000)}).json()["id"]
        before = {j["id"]: j for j in c.get("/jobs", params={"limit": 100}).json()["items"]}
        assert before[victim]["ray_job"] == f"ddray-{victim}"
    head = json.loads((svc.state_dir / "ray" / "head.json").read_text())

    svc.kill()  # a crash: nothing is cleaned up by the service
    assert head["temp_dir"] in process_cmdline(head["pid"])  # the head (and the job on it) outlived it
    svc.start(timeout=150)  # same state dir, same SQLite file

    with svc.client() as c:
        after = {j["id"]: j for j in c.get("/jobs", params={"limit": 100}).json()["items"]}
        assert set(after) == set(before)
        for job_id, job in before.items():
            if job["status"] in FINAL:
                assert after[job_id] == job
        assert after[victim]["status"] == "running"
        job = wait_for(lambda: (lambda j: j if j["status"] in FINAL else None)(c.get(f"/jobs/{victim}").json()), 180, what="victim ended")
        assert job["status"] == "succeeded", (job["error"], c.get(f"/jobs/{victim}/logs").text[-2000:])
        results = c.get(f"/jobs/{victim}/results").json()
        assert [e["epochs_run"] for e in results["local"]] == [150] * 4  # trained through, not restarted
        assert all(e.get("resumed_from_epoch", 0) == 0 for e in results["local"])
        assert job["results"]["aggregation"]["dnn"] == results["aggregation"]["dnn"]["test_accuracy"]
        assert "epoch 150/150" in c.get(f"/jobs/{victim}/logs").text
        # the queued job survived the crash and starts on the adopted head
        wait_for(lambda: c.get(f"/jobs/{queued}").json()["status"] != "queued", 90, what="queued job started")
        job = c.get(f"/jobs/{queued}").json()
        assert job["status"] == "running", (job["error"], c.get(f"/jobs/{queued}/logs").text[-2000:])
        wait_for(lambda: any((s.get("epoch") or 0) >= 1 for s in c.get(f"/jobs/{queued}").json()["subdomains"]), 120, what="queued job training")

    # a graceful stop (SIGTERM) stops the running job, marks it failed with the reason, and stops the Ray head
    assert svc.stop() in (0, -15)  # uvicorn re-raises the SIGTERM it handled, after a clean shutdown
    assert "Application shutdown complete" in svc.log_text()
    store = JobStore(f"sqlite:///{svc.state_dir / 'ddray.db'}")
    stopped = store.get(queued)
    store.close()
    assert stopped.status == "failed" and stopped.error == STOPPED
    assert not (svc.state_dir / "ray" / "head.json").exists()
    assert head["temp_dir"] not in process_cmdline(head["pid"])
