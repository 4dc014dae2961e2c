"""The cloud path end to end, on this machine: a real multi-node Ray cluster, a real S3 server, a real service.

The cluster is what ``ray up`` makes, in small: a head with no GPU and a worker
node with two (logical) GPUs, both from ``ray start`` with token
authentication on. moto's S3 server stands in for the bucket. ``ddray serve``
joins the cluster by its address and runs every job as a Ray job, reading data
from the bucket and writing each run under its own prefix there.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from raycluster import LocalRayCluster
from service_doubles import Service

pytestmark = [pytest.mark.cluster, pytest.mark.ray, pytest.mark.timeout(600)]

FINAL = ("succeeded", "failed", "cancelled")
RUNS = "s3://ddray-runs/runs"
DATA = "s3://ddray-data/sets"


def gpu_job(epochs: int = 4, seed: int = 0, lr: float = 0.01) -> dict:
    """Four subdomains at half a GPU each, data from the bucket: they fit only on the GPU node."""
    return {
        "dataset": {"source": "npz", "path": f"{DATA}/count.npz"},
        "decomposition": {"grid": [2, 2], "overlap": 0},
        "local_model": {"name": "small_cnn", "width": 0.25},
        "training": {"epochs": epochs, "batch_size": 32, "lr": lr},
        "aggregation": {"methods": ["dnn", "average"], "dnn": {"hidden": [16], "epochs": 10}},
        "resources": {"cpus_per_subdomain": 0.5, "gpus_per_subdomain": 0.5},
        "seed": seed,
    }


@pytest.fixture(scope="module")
def cloud(s3, tmp_path_factory):
    s3.create_bucket("ddray-runs")
    s3.create_bucket("ddray-data")
    rng = np.random.default_rng(0)
    x = rng.random((240, 1, 16, 16)).astype("float32")
    y = (x[:, 0, :8, :8].mean(axis=(1, 2)) > 0.5).astype("int64") + 2 * (x[:, 0, 8:, 8:].mean(axis=(1, 2)) > 0.5)
    buf = io.BytesIO()
    np.savez(buf, x=x, y=y)
    s3.client().put_object(Bucket="ddray-data", Key="sets/count.npz", Body=buf.getvalue())

    cluster = LocalRayCluster(head_cpus=1, head_gpus=0, extra_env=s3.env)
    service = None
    try:
        cluster.start_head()
        cluster.add_node(cpus=2, gpus=2)
        nodes = cluster.wait_nodes(2)
        gpu_node = next(n["id"] for n in nodes if n["resources"].get("GPU"))
        local_root = tmp_path_factory.mktemp("data")
        service = Service(
            tmp_path_factory.mktemp("state"),
            local_root,
            extra_args=["--ray-address", cluster.address, "--max-concurrent-jobs", "2"],
            env={
                **cluster.env,
                "DDRAY_STORAGE": RUNS,
                "DDRAY_DATA_ROOTS": f"{local_root}:{DATA}",
                "DDRAY_CANCEL_GRACE_S": "5",
            },
        )
        service.start(timeout=120)
        yield cluster, service, s3, gpu_node
    finally:
        if service is not None:
            service.stop()
        cluster.stop()


def wait_final(client, job_id: str, timeout: float = 240) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/jobs/{job_id}").json()
        if job["status"] in FINAL:
            return job
        time.sleep(0.5)
    raise TimeoutError(f"job {job_id} not finished after {timeout:.0f} s: {job}")


def ddray(service: Service, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, **service.env, "DDRAY_URL": service.url, "DDRAY_API_TOKEN": service.token}
    return subprocess.run([sys.executable, "-m", "ddray", *args], env=env, capture_output=True, text=True, timeout=180)


def test_gpu_job_from_a_bucket_runs_on_the_gpu_node_and_lands_in_its_own_prefix(cloud, tmp_path):
    cluster, service, s3, gpu_node = cloud
    with service.client() as c:
        health = c.get("/healthz").json()
        assert health["status"] == "ok" and health["ray"]["status"] == "external" and health["ray"]["nodes"] == 2
        job_id = c.post("/jobs", json={"name": "gpu", "config": gpu_job()}).json()["id"]
        job = wait_final(c, job_id)
        assert job["status"] == "succeeded", (job["error"], c.get(f"/jobs/{job_id}/logs").text[-3000:])
        assert job["ray_job"] == f"ddray-{job_id}" and job["run_location"] == f"{RUNS}/{job_id}"
        results = c.get(f"/jobs/{job_id}/results").json()
        assert [e["node_id"] for e in results["local"]] == [gpu_node] * 4  # half a GPU each: only the GPU node fits
        assert [e["device"] for e in results["local"]] == ["cpu"] * 4  # logical GPUs: no CUDA here, and results say so
        assert job["results"]["aggregation"]["dnn"] == results["aggregation"]["dnn"]["test_accuracy"]

        keys = [k for k in s3.keys("ddray-runs", f"runs/{job_id}/") if not k.endswith("/")]  # not pyarrow's folder markers
        rel = {k.removeprefix(f"runs/{job_id}/") for k in keys}
        assert {"results.json", "results.md", "results.csv", "accuracy.png", "config.yaml", "run.json", "log.txt",
                "checkpoints/dnn.pt", *(f"checkpoints/local/sub{i:03d}.pt" for i in range(4))} <= rel, sorted(rel)
        listing = c.get(f"/jobs/{job_id}/artifacts").json()
        assert listing["location"] == f"{RUNS}/{job_id}" and set(listing["files"]) == rel

    # Ray knows the job too: `ray job list` / the dashboard show it (asked from a fresh process with the
    # cluster's token: this test process may hold another Ray's token already)
    code = (
        "import sys; from ray.job_submission import JobSubmissionClient;"
        "print('STATUS', JobSubmissionClient(sys.argv[1]).get_job_status(sys.argv[2]).value)"
    )
    listed = subprocess.run([sys.executable, "-c", code, cluster.dashboard_url, f"ddray-{job_id}"],
                            env=cluster.env, capture_output=True, text=True, timeout=120)
    assert "STATUS SUCCEEDED" in listed.stdout, listed.stdout + listed.stderr[-2000:]

    # the whole run comes back, through the service or straight from the bucket (no service needed: survives `ray down`)
    got = ddray(service, "download", job_id, str(tmp_path / "via-service"))
    assert got.returncode == 0, got.stderr
    direct = ddray(service, "download", f"{RUNS}/{job_id}", str(tmp_path / "via-bucket"))
    assert direct.returncode == 0, direct.stderr
    for folder in ("via-service", "via-bucket"):
        files = {str(p.relative_to(tmp_path / folder)) for p in (tmp_path / folder).rglob("*") if p.is_file()}
        assert files == rel, (folder, sorted(files ^ rel))
    assert (tmp_path / "via-service" / "checkpoints" / "dnn.pt").read_bytes() == s3.client().get_object(
        Bucket="ddray-runs", Key=f"runs/{job_id}/checkpoints/dnn.pt")["Body"].read()
    # and the downloaded run is a working model
    np.savez(tmp_path / "new.npz", x=np.random.default_rng(1).random((5, 1, 16, 16)).astype("float32"))
    predicted = ddray(service, "predict", str(tmp_path / "via-bucket"), str(tmp_path / "new.npz"), "--json")
    assert predicted.returncode == 0, predicted.stderr
    assert len(__import__("json").loads(predicted.stdout)) == 5


def test_two_identical_jobs_with_one_storage_never_share_state(cloud):
    _, service, s3, _ = cloud
    with service.client() as c:
        first = c.post("/jobs", json={"config": gpu_job(epochs=3, seed=1, lr=0.01)}).json()["id"]
        second = c.post("/jobs", json={"config": gpu_job(epochs=3, seed=1, lr=0.01)}).json()["id"]
        jobs = [wait_final(c, first), wait_final(c, second)]
        assert [j["status"] for j in jobs] == ["succeeded", "succeeded"], [j["error"] for j in jobs]
        runs = [c.get(f"/jobs/{j}/results").json() for j in (first, second)]
        for job_id, results in zip((first, second), runs):
            assert all(e["epochs_run"] == 3 and e.get("resumed_from_epoch", 0) == 0 for e in results["local"]), results["local"]
            state = [k for k in s3.keys("ddray-runs", f"runs/{job_id}/state/") if not k.endswith("/")]
            assert len(state) == 4, state  # each job's own per-epoch state, under its own prefix
    assert not set(s3.keys("ddray-runs", f"runs/{first}/")) & set(s3.keys("ddray-runs", f"runs/{second}/"))


def test_bad_storage_and_data_uris_are_refused_naming_the_allowed_prefixes(cloud):
    _, service, _, _ = cloud
    with service.client() as c:
        before = c.get("/jobs").json()["total"]
        cases = [
            ({**gpu_job(), "storage": "s3://someone-elses-bucket/x"}, "storage", RUNS),
            ({**gpu_job(), "storage": f"{RUNS}/../escape"}, "storage", RUNS),
            ({**gpu_job(), "dataset": {"source": "npz", "path": "s3://ddray-data/private/x.npz"}}, "path", DATA),
            ({**gpu_job(), "dataset": {"source": "npz", "path": f"{DATA}/missing.npz"}}, "path", DATA),
        ]
        for config, field, allowed in cases:
            r = c.post("/jobs", json={"config": config})
            assert r.status_code == 422, r.text
            detail = r.json()["detail"][0]
            assert detail["loc"][-1] == field and allowed in detail["msg"], detail
        assert c.get("/jobs").json()["total"] == before


def test_restart_of_the_service_during_a_job_reattaches_it(cloud):
    """On a joined cluster the service's stop leaves jobs running in Ray; the next start follows them to the end."""
    _, service, _, _ = cloud
    with service.client() as c:
        job_id = c.post("/jobs", json={"name": "long", "config": gpu_job(epochs=60)}).json()["id"]
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            job = c.get(f"/jobs/{job_id}").json()
            if any((s.get("epoch") or 0) >= 1 for s in job["subdomains"]):
                break
            assert job["status"] not in FINAL, job
            time.sleep(0.5)
    assert service.stop() in (0, -15)
    service.start(timeout=120)
    with service.client() as c:
        assert c.get(f"/jobs/{job_id}").json()["status"] == "running"
        job = wait_final(c, job_id)
        assert job["status"] == "succeeded", (job["error"], c.get(f"/jobs/{job_id}/logs").text[-3000:])
        results = c.get(f"/jobs/{job_id}/results").json()
        assert [e["epochs_run"] for e in results["local"]] == [60] * 4
