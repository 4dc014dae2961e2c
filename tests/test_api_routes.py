"""Fast route tests of the job service: a fake runner (dependency override), a real SQLite file, no Ray."""

from __future__ import annotations

import builtins
import json
import os
import subprocess
import sys
import time

import pytest
from fastapi.testclient import TestClient

from api.cluster import free_port
from api.deps import get_runner
from api.main import create_app
from api.runner import JobRunner, failure_reason
from api.settings import ServiceSettings
from api.store import JobStore
from ddray.client.http import ClientError, ServiceClient
from service_doubles import FakeRunner, tiny_job

TOKEN = "route-test-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture()
def data_root(tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    return root


@pytest.fixture()
def settings(tmp_path, data_root):
    return ServiceSettings(
        api_token=TOKEN, state_dir=tmp_path / "state", data_roots=[data_root], max_body_bytes=8192, max_upload_bytes=4096
    )


@pytest.fixture()
def service(settings):
    """(client, fake runner, store, app): the real routes and store, the runner swapped out."""
    app = create_app(settings)
    fake = FakeRunner()
    app.dependency_overrides[get_runner] = lambda: fake
    with TestClient(app) as client:
        yield client, fake, app.state.store, app
    assert fake.stopped
    real = app.state.runner
    assert isinstance(real, JobRunner) and real._task is None and real.cluster.status == "stopped"  # Ray never started


def submit(client, config=None, **kw):
    return client.post("/jobs", json={"config": config if config is not None else tiny_job(), **kw}, headers=AUTH)


# -- auth -----------------------------------------------------------------------
ENDPOINTS = [
    ("GET", "/jobs"),
    ("POST", "/jobs"),
    ("GET", "/jobs/abc"),
    ("POST", "/jobs/abc/cancel"),
    ("GET", "/jobs/abc/results"),
    ("GET", "/jobs/abc/artifacts/accuracy.png"),
    ("GET", "/jobs/abc/logs"),
    ("POST", "/jobs/abc/predict"),
]


@pytest.mark.parametrize("method,path", ENDPOINTS)
@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong-token-0123456789"}, {"Authorization": f"Basic {TOKEN}"}, {"Authorization": TOKEN}])
def test_every_endpoint_needs_the_token(service, method, path, headers):
    client, fake, store, _ = service
    r = client.request(method, path, headers=headers, json={"config": tiny_job()} if method == "POST" else None)
    assert r.status_code == 401, r.text
    assert r.headers["www-authenticate"] == "Bearer"
    assert store.list()[1] == 0 and fake.wakes == 0


def test_healthz_is_open_but_shows_details_only_with_the_token(service):
    client, *_ = service
    r = client.get("/healthz")
    assert r.status_code == 200 and r.json() == {"status": "ok"}  # no resources, counts or errors for strangers
    assert client.get("/healthz", headers={"Authorization": "Bearer wrong-token-0123456789"}).json() == {"status": "ok"}
    r = client.get("/healthz", headers=AUTH)
    assert r.json()["database"] == "ok" and r.json()["jobs"] == {"queued": 0, "running": 0} and r.json()["ray"]["status"] == "paused"


def test_tokenless_uploads_are_refused_before_the_body_is_read(service):
    """The gate answers 401 from the headers; the client's body is never consumed (nothing is spooled)."""
    client, *_ = service
    app = client.app
    sent = {"bytes": 0}

    def body():
        for _ in range(64):  # 64 MiB offered in chunks; only what the server pulls is produced
            sent["bytes"] += 1024 * 1024
            yield b"x" * (1024 * 1024)

    import asyncio

    async def call() -> int:
        messages = []
        chunks = body()

        async def receive():
            chunk = next(chunks, None)
            return {"type": "http.request", "body": chunk or b"", "more_body": chunk is not None}

        async def send(message):
            messages.append(message)

        scope = {"type": "http", "method": "POST", "path": "/jobs/0123456789ab/predict", "raw_path": b"/jobs/0123456789ab/predict",
                 "query_string": b"", "headers": [(b"content-type", b"multipart/form-data; boundary=x")],
                 "http_version": "1.1", "scheme": "http", "server": ("testserver", 80), "client": ("127.0.0.1", 1), "root_path": ""}
        await app(scope, receive, send)
        return messages[0]["status"]

    assert asyncio.run(call()) == 401
    assert sent["bytes"] == 0


def test_the_queue_is_bounded(tmp_path):
    settings = ServiceSettings(api_token=TOKEN, state_dir=tmp_path / "s", max_queued_jobs=2)
    app = create_app(settings)
    app.dependency_overrides[get_runner] = FakeRunner
    with TestClient(app) as client:
        assert [submit(client).status_code for _ in range(2)] == [201, 201]
        r = submit(client)
        assert r.status_code == 429 and r.headers["retry-after"] == "30" and "DDRAY_MAX_QUEUED_JOBS" in r.json()["detail"]


def test_openapi_documents_every_endpoint_and_the_bearer_scheme(service):
    client, *_ = service
    schema = client.get("/openapi.json").json()
    assert {"/jobs", "/jobs/{job_id}", "/jobs/{job_id}/results", "/jobs/{job_id}/artifacts", "/jobs/{job_id}/artifacts/{name}", "/jobs/{job_id}/logs",
            "/jobs/{job_id}/cancel", "/jobs/{job_id}/predict", "/healthz"} <= set(schema["paths"])
    assert any(s.get("scheme") == "bearer" for s in schema["components"]["securitySchemes"].values())
    assert "RunConfig" in schema["components"]["schemas"]


# -- submit ---------------------------------------------------------------------
def test_submit_records_the_job_before_answering(service, settings):
    client, fake, store, _ = service
    r = submit(client, name="first")
    assert r.status_code == 201, r.text
    job_id = r.json()["id"]
    assert r.json()["status"] == "queued" and r.headers["location"] == f"/jobs/{job_id}"
    assert fake.wakes == 1
    # durable: a fresh engine on the same file sees it
    other = JobStore(settings.db_url)
    assert other.get(job_id).status == "queued"
    other.close()
    job = client.get(f"/jobs/{job_id}", headers=AUTH).json()
    assert job["name"] == "first" and job["status"] == "queued" and job["phase"] is None
    assert job["config"]["training"]["epochs"] == 3 and job["config"]["training"]["optimizer"] == "adam"  # defaults filled in


def test_sqlite_runs_in_wal_mode(service):
    _, _, store, _ = service
    with store.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"


@pytest.mark.parametrize(
    "patch,field",
    [
        ({"training": {"epochs": 0}}, ["training", "epochs"]),
        ({"training": {"epoch": 3}}, ["training", "epoch"]),
        ({"local_model": {"name": "no_such_model"}}, ["local_model", "name"]),
        ({"dataset": {"source": "npz"}}, ["dataset"]),
        ({"decomposition": {"grid": [2, 2, 2, 2]}}, ["decomposition", "grid"]),
    ],
)
def test_invalid_config_is_422_naming_the_field(service, patch, field):
    client, fake, store, _ = service
    config = {**tiny_job(), **patch}
    r = submit(client, config)
    assert r.status_code == 422, r.text
    locs = [d["loc"] for d in r.json()["detail"]]
    assert any(loc[:2] == ["body", "config"] and loc[2 : 2 + len(field)] == field for loc in locs), locs
    assert store.list()[1] == 0 and fake.wakes == 0


def test_unknown_top_level_key_and_non_object_config(service):
    client, *_ = service
    assert client.post("/jobs", json={"config": tiny_job(), "cmd": "rm -rf /"}, headers=AUTH).status_code == 422
    assert client.post("/jobs", json={"config": "dataset: x"}, headers=AUTH).status_code == 422
    assert client.post("/jobs", content=b"{not json", headers={**AUTH, "content-type": "application/json"}).status_code == 422


# -- data paths -----------------------------------------------------------------
@pytest.fixture()
def outside(tmp_path):
    secret = tmp_path / "outside" / "secret.npz"
    secret.parent.mkdir()
    secret.write_bytes(b"not for you")
    return secret


@pytest.fixture()
def opened(monkeypatch):
    """Every path opened through builtins.open / os.open while the test runs."""
    seen: list[str] = []
    real_open, real_os_open = builtins.open, os.open

    def spy_open(file, *a, **k):
        seen.append(str(file))
        return real_open(file, *a, **k)

    def spy_os_open(path, *a, **k):
        seen.append(str(path))
        return real_os_open(path, *a, **k)

    monkeypatch.setattr(builtins, "open", spy_open)
    monkeypatch.setattr(os, "open", spy_os_open)
    return seen


def _escapes(data_root, outside):
    (data_root / "link.npz").symlink_to(outside)
    (data_root / "linkdir").symlink_to(outside.parent, target_is_directory=True)
    tree = data_root / "images" / "cat"
    tree.mkdir(parents=True)
    (tree / "a.png").symlink_to(outside)
    return {
        "dotdot": "../outside/secret.npz",
        "dotdot_inside": "images/../../outside/secret.npz",
        "absolute_outside": str(outside),
        "etc_passwd": "/etc/passwd",
        "relative_etc": "../../../../../../etc/passwd",
        "home": "~/secret.npz",
        "symlink_file": "link.npz",
        "symlink_dir": "linkdir/secret.npz",
        "symlink_in_tree": "images",
        "url": "file:///etc/passwd",
    }


@pytest.mark.parametrize(
    "case",
    ["dotdot", "dotdot_inside", "absolute_outside", "etc_passwd", "relative_etc", "home", "symlink_file", "symlink_dir", "symlink_in_tree", "url"],
)
def test_data_paths_outside_the_roots_are_422_and_nothing_is_read(service, data_root, outside, opened, case):
    client, fake, store, _ = service
    path = _escapes(data_root, outside)[case]
    source = "imagefolder" if case == "symlink_in_tree" else "npz"
    r = submit(client, tiny_job(source=source, path=path))
    assert r.status_code == 422, r.text
    detail = r.json()["detail"][0]
    assert detail["loc"] == ["body", "config", "dataset", "path"] and detail["type"] == "path_not_allowed"
    assert not any("secret" in p or p == "/etc/passwd" for p in opened), opened
    assert store.list()[1] == 0 and fake.wakes == 0


def test_storage_outside_the_roots_is_422(service, tmp_path):
    client, *_ = service
    r = submit(client, {**tiny_job(), "storage": str(tmp_path / "elsewhere")})
    assert r.status_code == 422
    detail = r.json()["detail"][0]
    assert detail["loc"] == ["body", "config", "storage"] and "DDRAY_STORAGE" in detail["msg"]


def test_storage_must_lie_under_ddray_storage_or_a_storage_root(tmp_path):
    settings = ServiceSettings(
        api_token=TOKEN, state_dir=tmp_path / "s", storage="s3://runs-bucket/ddray", storage_roots=f"{tmp_path}/shared:gs://other/x"
    )
    app = create_app(settings)
    app.dependency_overrides[get_runner] = FakeRunner
    with TestClient(app) as client:
        store = app.state.store
        for allowed in ("s3://runs-bucket/ddray", "s3://runs-bucket/ddray/team-a/", str(tmp_path / "shared" / "mine"), "gs://other/x/y"):
            r = submit(client, {**tiny_job(), "storage": allowed})
            assert r.status_code == 201, (allowed, r.text)
            assert store.get(r.json()["id"]).config["storage"] == allowed.rstrip("/")
        for refused in ("s3://runs-bucket/ddray-other", "s3://runs-bucket", "s3://runs-bucket/ddray/../x", str(tmp_path / "sharedx"), "/tmp"):
            r = submit(client, {**tiny_job(), "storage": refused})
            assert r.status_code == 422, (refused, r.text)
            msg = r.json()["detail"][0]["msg"]
            assert "s3://runs-bucket/ddray" in msg and str(tmp_path / "shared") in msg, msg  # names the allowed prefixes


def test_uri_data_paths_must_lie_under_a_uri_data_root(tmp_path):
    settings = ServiceSettings(api_token=TOKEN, state_dir=tmp_path / "s", data_roots=f"{tmp_path}/d:s3://data-bucket/sets")
    assert settings.data_roots == [str(tmp_path.resolve() / "d"), "s3://data-bucket/sets"]
    app = create_app(settings)
    app.dependency_overrides[get_runner] = FakeRunner
    with TestClient(app) as client:
        for refused in ("s3://data-bucket/other/x.npz", "s3://data-bucket/sets/../other/x.npz", "gs://data-bucket/sets/x.npz", "http://evil/x.npz"):
            r = submit(client, tiny_job(source="npz", path=refused))
            assert r.status_code == 422, (refused, r.text)
            detail = r.json()["detail"][0]
            assert detail["loc"][-2:] == ["dataset", "path"] and "s3://data-bucket/sets" in detail["msg"], detail


def test_paths_under_a_root_are_stored_resolved(service, data_root):
    client, _, store, _ = service
    (data_root / "sets").mkdir()
    (data_root / "sets" / "d.npz").write_bytes(b"x")
    (data_root / "alias.npz").symlink_to(data_root / "sets" / "d.npz")  # a link that stays inside is fine
    for given in ("sets/d.npz", str(data_root / "sets" / "d.npz"), "alias.npz"):
        r = submit(client, tiny_job(source="npz", path=given))
        assert r.status_code == 201, r.text
        assert store.get(r.json()["id"]).config["dataset"]["path"] == str((data_root / "sets" / "d.npz").resolve())
    r = submit(client, tiny_job(source="npz", path="sets/missing.npz"))
    assert r.status_code == 422 and r.json()["detail"][0]["type"] == "path_not_found"


def test_no_data_roots_means_no_data_paths(tmp_path):
    settings = ServiceSettings(api_token=TOKEN, state_dir=tmp_path / "s")
    app = create_app(settings)
    app.dependency_overrides[get_runner] = FakeRunner
    with TestClient(app) as client:
        assert submit(client, tiny_job(source="npz", path="x.npz")).status_code == 422
        assert submit(client, tiny_job()).status_code == 201  # synthetic data needs no path


# -- size limits ------------------------------------------------------------------
def test_body_over_the_limit_is_413(service):
    client, _, store, _ = service
    big = {"config": tiny_job(), "name": "x" * 10_000}
    assert client.post("/jobs", json=big, headers=AUTH).status_code == 413

    def chunks():  # no Content-Length: counted while streaming
        body = json.dumps(big).encode()
        for i in range(0, len(body), 1000):
            yield body[i : i + 1000]

    r = client.post("/jobs", content=chunks(), headers={**AUTH, "content-type": "application/json"})
    assert r.status_code == 413
    assert store.list()[1] == 0


def test_upload_over_the_limit_is_413(service):
    client, _, store, _ = service
    job = store.create(tiny_job())
    store.finish(job.id, "succeeded")
    r = client.post(f"/jobs/{job.id}/predict", files={"files": ("x.npz", b"0" * 100_000)}, headers=AUTH)
    assert r.status_code == 413


# -- list, get, cancel ----------------------------------------------------------
def test_list_is_newest_first_paginated_and_filtered(service):
    client, *_ = service
    ids = [submit(client, name=f"j{i}").json()["id"] for i in range(5)]
    page = client.get("/jobs", params={"limit": 2}, headers=AUTH).json()
    assert [j["id"] for j in page["items"]] == ids[::-1][:2] and page["total"] == 5
    page2 = client.get("/jobs", params={"limit": 2, "offset": 2}, headers=AUTH).json()
    assert [j["id"] for j in page2["items"]] == ids[::-1][2:4]
    assert client.post(f"/jobs/{ids[1]}/cancel", headers=AUTH).json()["status"] == "cancelled"
    cancelled = client.get("/jobs", params={"status": "cancelled"}, headers=AUTH).json()
    assert [j["id"] for j in cancelled["items"]] == [ids[1]] and cancelled["total"] == 1
    queued = client.get("/jobs", params={"status": "queued"}, headers=AUTH).json()
    assert queued["total"] == 4
    assert client.get("/jobs", params={"status": "nope"}, headers=AUTH).status_code == 422
    assert client.get("/jobs", params={"limit": 0}, headers=AUTH).status_code == 422


def test_unknown_job_is_404_everywhere(service):
    client, *_ = service
    for method, path in ENDPOINTS[2:]:
        r = client.request(method, path.replace("abc", "0123456789ab"), headers=AUTH, files={"files": ("a.npz", b"x")} if path.endswith("predict") else None)
        assert r.status_code == 404, (path, r.text)


def test_cancel_rules_and_conflicts(service):
    client, fake, store, _ = service
    job_id = submit(client).json()["id"]
    r = client.post(f"/jobs/{job_id}/cancel", headers=AUTH)
    assert r.status_code == 202 and r.json()["status"] == "cancelled"
    assert client.post(f"/jobs/{job_id}/cancel", headers=AUTH).status_code == 409
    running = store.create(tiny_job())
    store.claim_next("me")
    r = client.post(f"/jobs/{running.id}/cancel", headers=AUTH)
    assert r.json()["status"] == "running" and store.get(running.id).cancel_requested  # the runner ends it
    assert client.get(f"/jobs/{job_id}/results", headers=AUTH).status_code == 409
    assert client.get(f"/jobs/{job_id}/logs", headers=AUTH).text == ""
    assert client.get(f"/jobs/{job_id}/artifacts/accuracy.png", headers=AUTH).status_code == 404
    assert client.get(f"/jobs/{job_id}/artifacts/..%2Fconfig.yaml", headers=AUTH).status_code == 404


def test_progress_snapshot_is_reported(service, tmp_path):
    client, _, store, _ = service
    job = store.create(tiny_job())
    store.claim_next("me")
    run = tmp_path / "jobdir" / "run"
    run.mkdir(parents=True)
    store.set_submission(job.id, submission_id=f"ddray-{job.id}", job_dir=str(run.parent), run_location=str(run))
    assert client.get(f"/jobs/{job.id}", headers=AUTH).json()["phase"] == "starting"
    now = time.time()
    (run / "progress.json").write_text(json.dumps({
        "phase": "local_training", "started": now - 5, "updated": now,
        "subdomains": {"1": {"status": "running", "epoch": 2, "epochs": 5, "train_loss": 0.5, "val_accuracy": 0.7, "best_val_accuracy": 0.75},
                       "0": {"status": "pending"}, "10": {"status": "running", "epoch": 1, "trial": 2, "trials_done": 1}},
        "phases": {"loading": {"started": now - 5}, "local_training": {"started": now - 3}},
    }))
    job = client.get(f"/jobs/{job.id}", headers=AUTH).json()
    assert job["phase"] == "local_training"
    assert [s["index"] for s in job["subdomains"]] == [0, 1, 10]
    assert job["subdomains"][1] | {} == {**job["subdomains"][1], "epoch": 2, "best_val_accuracy": 0.75, "val_accuracy": 0.7}
    assert job["subdomains"][2]["trials_done"] == 1
    assert job["timings"]["phases"]["local_training"] == pytest.approx(2.0, abs=0.01)
    assert job["ray_job"] == f"ddray-{job['id']}" and job["run_location"] == str(run)


def test_logs_of_an_ended_job_come_from_the_copy_kept_in_its_folder(settings, tmp_path):
    """Ray's copy of a log goes with its session; the runner keeps one in the job folder (no Ray needed here)."""
    store = JobStore(settings.db_url)
    job = store.create(tiny_job())
    store.claim_next("me")
    job_dir = tmp_path / "jobdir"
    job_dir.mkdir()
    store.set_submission(job.id, submission_id=f"ddray-{job.id}", job_dir=str(job_dir), run_location=str(job_dir / "run"))
    store.finish(job.id, "failed", error="x")
    (job_dir / "log.txt").write_text("".join(f"line {i}\n" for i in range(10)))
    runner = JobRunner(settings, store)
    assert runner.logs(store.get(job.id)).endswith("line 8\nline 9\n")
    store.close()


def test_predict_needs_a_succeeded_job_and_safe_uploads(service, tmp_path):
    client, _, store, _ = service
    queued = submit(client).json()["id"]
    assert client.post(f"/jobs/{queued}/predict", files={"files": ("a.npz", b"x")}, headers=AUTH).status_code == 409
    done = store.create(tiny_job())
    store.claim_next("me")
    store.set_submission(done.id, submission_id="ddray-x", job_dir=str(tmp_path / "done"), run_location=str(tmp_path / "done" / "run"))
    (tmp_path / "done" / "run").mkdir(parents=True)
    (tmp_path / "done" / "run" / "results.json").write_text("{}")
    store.finish(done.id, "succeeded")
    r = client.post(f"/jobs/{done.id}/predict", files={"files": ("evil.py", b"print(1)")}, headers=AUTH)
    assert r.status_code == 422 and "only" in r.json()["detail"]
    # a run folder without a model: a clear 422, not a crash, and the name cannot climb out
    r = client.post(f"/jobs/{done.id}/predict", files={"files": ("../../a.npz", b"x")}, headers=AUTH)
    assert r.status_code == 422, r.text
    assert not (tmp_path / "a.npz").exists()


# -- settings, runner pieces, client ------------------------------------------------
def test_data_roots_must_stay_apart_from_where_the_service_writes(tmp_path):
    for kwargs in ({"data_roots": str(tmp_path)}, {"data_roots": str(tmp_path / "state" / "jobs")},
                   {"data_roots": "s3://b/data", "storage": "s3://b/data/runs"}, {"data_roots": f"{tmp_path}/d", "storage_roots": f"{tmp_path}"}):
        with pytest.raises(ValueError, match="overlaps"):
            ServiceSettings(api_token=TOKEN, state_dir=tmp_path / "state", **kwargs)
    ServiceSettings(api_token=TOKEN, state_dir=tmp_path / "state", data_roots="s3://b/data", storage="s3://b/data-runs")  # apart


def test_settings_refuse_to_start_without_a_strong_token(monkeypatch, tmp_path):
    monkeypatch.delenv("DDRAY_API_TOKEN", raising=False)
    with pytest.raises(ValueError, match="DDRAY_API_TOKEN"):
        ServiceSettings(state_dir=tmp_path)
    with pytest.raises(ValueError, match="too weak"):
        ServiceSettings(api_token="changethis", state_dir=tmp_path)
    assert len(ServiceSettings(dev=True, state_dir=tmp_path).token) >= 32
    monkeypatch.setenv("DDRAY_API_TOKEN", TOKEN)
    monkeypatch.setenv("DDRAY_DATA_ROOTS", f"{tmp_path}/a:{tmp_path}/b")
    monkeypatch.setenv("DDRAY_MAX_CONCURRENT_JOBS", "3")
    s = ServiceSettings(state_dir=tmp_path / "state")
    assert s.token == TOKEN and s.data_roots == [str(tmp_path / "a"), str(tmp_path / "b")] and s.max_concurrent_jobs == 3
    assert s.db_url == f"sqlite:///{tmp_path}/state/ddray.db"


def test_serve_refuses_without_token(monkeypatch, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "DDRAY_API_TOKEN"}
    r = subprocess.run([sys.executable, "-m", "ddray", "serve", "--state-dir", str(tmp_path)], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "DDRAY_API_TOKEN" in r.stderr


def test_failure_reason_prefers_the_error_line():
    log = "ddray: loading\nerror: dataset path not found: /data/x.npz\n  (dataset.path)\n"
    assert failure_reason(log, "Job entrypoint command failed with exit code 2", 2) == "dataset path not found: /data/x.npz (dataset.path)"
    reason = failure_reason("Traceback...\nRuntimeError: boom\n", "Job entrypoint command failed with exit code 1", 1)
    assert reason == "Job entrypoint command failed with exit code 1 (exit code 1): RuntimeError: boom"


def test_client_reports_refused_connections_and_bad_tokens(service):
    client, *_ = service
    with pytest.raises(ClientError, match="cannot reach"):
        ServiceClient(f"http://127.0.0.1:{free_port()}", TOKEN).list()
    c = ServiceClient("http://testserver", "wrong-token-0123456789")
    c.http = client
    c.http.headers["Authorization"] = "Bearer wrong-token-0123456789"
    with pytest.raises(ClientError, match="not authorized"):
        c.list()
    c.http.headers["Authorization"] = f"Bearer {TOKEN}"
    with pytest.raises(ClientError, match="training.epochs"):
        c.submit({**tiny_job(), "training": {"epochs": 0}})
    job = c.submit(tiny_job(), name="via client")
    assert c.get(job["id"])["name"] == "via client"
    with pytest.raises(ClientError, match="not found"):
        c.get("0123456789ab")
    assert c.cancel(job["id"])["status"] == "cancelled"  # what `ddray cancel` and `ddray status --status` rely on
    listing = c.list(status="cancelled")
    assert [j["id"] for j in listing["items"]] == [job["id"]] and listing["total"] == 1


def test_results_and_artifacts_of_a_finished_job(service, tmp_path):
    client, _, store, _ = service
    job = store.create(tiny_job())
    store.claim_next("me")
    run = tmp_path / "finished" / "run"
    run.mkdir(parents=True)
    store.set_submission(job.id, submission_id=f"ddray-{job.id}", job_dir=str(run.parent), run_location=str(run))
    store.finish(job.id, "succeeded", exit_code=0)
    (run / "results.json").write_text('{"local": [{"test_accuracy": NaN}], "timings_s": {"total_wall": 3.5}}')
    (run / "results.csv").write_text("model,acc\n")
    r = client.get(f"/jobs/{job.id}/results", headers=AUTH)
    assert r.status_code == 200 and r.json() == {"local": [{"test_accuracy": None}], "timings_s": {"total_wall": 3.5}}
    assert client.get(f"/jobs/{job.id}", headers=AUTH).json()["timings"]["results"] == {"total_wall": 3.5}
    r = client.get(f"/jobs/{job.id}/artifacts/results.csv", headers=AUTH)
    assert r.status_code == 200 and r.text == "model,acc\n" and r.headers["content-type"].startswith("text/csv")
    assert client.get(f"/jobs/{job.id}/artifacts/accuracy.png", headers=AUTH).status_code == 404
    (run / "checkpoints").mkdir()
    (run / "checkpoints" / "dnn.pt").write_bytes(b"weights")
    (tmp_path / "finished" / "secret.txt").write_text("not part of the run")
    listing = client.get(f"/jobs/{job.id}/artifacts", headers=AUTH).json()
    assert listing["files"] == ["checkpoints/dnn.pt", "results.csv", "results.json"] and listing["location"] == str(run)
    assert client.get(f"/jobs/{job.id}/artifacts/checkpoints/dnn.pt", headers=AUTH).content == b"weights"
    for escape in ("../secret.txt", "checkpoints/../../secret.txt", "%2E%2E/secret.txt", "/etc/passwd"):
        r = client.get(f"/jobs/{job.id}/artifacts/{escape}", headers=AUTH)
        assert r.status_code == 404 and "not part" not in r.text, (escape, r.text)


def test_polling_fast_path_never_skips_the_token_check(service):
    client, *_ = service
    job_id = submit(client).json()["id"]
    first = client.get(f"/jobs/{job_id}", headers=AUTH)
    assert first.status_code == 200  # the view is cached now
    assert client.get(f"/jobs/{job_id}").status_code == 401
    assert client.get(f"/jobs/{job_id}", headers={"Authorization": "Bearer wrong-token-0123456789"}).status_code == 401
    assert client.get(f"/jobs/{job_id}", headers={"Authorization": f"Bearer {TOKEN}x"}).status_code == 401
    again = client.get(f"/jobs/{job_id}", headers={"Authorization": f"bearer {TOKEN}"})
    assert again.status_code == 200 and again.json() == first.json()
    client.post(f"/jobs/{job_id}/cancel", headers=AUTH)  # a write by this process refreshes the view at once
    assert client.get(f"/jobs/{job_id}", headers=AUTH).json()["status"] == "cancelled"
