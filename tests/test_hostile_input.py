"""Absurd and hostile input gets a fast, clear 4xx that names the field, the bound and how to lift it.

Ray-free: the REST app with its runner swapped (``FakeRunner``), a real SQLite
file, and the config schema the CLI uses too.
"""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from api.deps import get_runner
from api.main import create_app
from api.settings import ServiceSettings
from ddray.config import ConfigError, parse_config
from service_doubles import FakeRunner, tiny_job

TOKEN = "hostile-test-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture()
def client(tmp_path):
    app = create_app(ServiceSettings(api_token=TOKEN, state_dir=tmp_path / "state"))
    app.dependency_overrides[get_runner] = FakeRunner
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c, app.state.store


ABSURD = [
    ({"training": {"epochs": 10**9}}, "training.epochs", "DDRAY_MAX_EPOCHS"),
    ({"decomposition": {"grid": [1000, 1000]}}, "decomposition.grid", "DDRAY_MAX_SUBDOMAINS"),
    ({"dataset": {"source": "synthetic", "size": [10**6, 10**6]}, "decomposition": {"grid": [2, 2]}}, "dataset.size", "DDRAY_MAX_IMAGE_PIXELS"),
    ({"aggregation": {"dnn": {"hidden": [10**9]}}}, "aggregation.dnn.hidden", "DDRAY_MAX_HIDDEN"),
    ({"tune": {"num_samples": 10**9}}, "tune.num_samples", "DDRAY_MAX_TRIALS"),
    ({"resources": {"cpus_per_subdomain": 10**6}}, "resources.cpus_per_subdomain", "DDRAY_MAX_CPUS_PER_SUBDOMAIN"),
    ({"training": {"batch_size": 10**9}}, "training.batch_size", "DDRAY_MAX_BATCH_SIZE"),
    ({"dataset": {"source": "synthetic", "samples": 10**9}}, "dataset.samples", "DDRAY_MAX_SAMPLES"),
]


@pytest.mark.parametrize("overrides, field, setting", ABSURD, ids=[a[1] for a in ABSURD])
def test_absurd_sizes_are_refused_naming_field_bound_and_setting(client, overrides, field, setting):
    c, store = client
    config = {**tiny_job(), **overrides}
    r = c.post("/jobs", json={"config": config}, headers=AUTH)
    assert r.status_code == 422, r.text
    msg = " ".join(d["msg"] for d in r.json()["detail"])
    assert field in msg and "above the limit" in msg and setting in msg, msg
    assert store.list()[1] == 0
    with pytest.raises(ConfigError, match=setting):  # the CLI and Python API refuse the same
        parse_config(config)


def test_a_bound_is_lifted_by_its_setting(monkeypatch):
    config = {**tiny_job(), "training": {"epochs": 20_000}}
    with pytest.raises(ConfigError, match="DDRAY_MAX_EPOCHS"):
        parse_config(config)
    monkeypatch.setenv("DDRAY_MAX_EPOCHS", "50000")
    assert parse_config(config).training.epochs == 20_000


@pytest.mark.parametrize("raw", ["NaN", "Infinity", "-Infinity", "1e999"])
def test_non_finite_numbers_are_a_clean_422_not_a_500(client, raw):
    c, store = client
    body = '{"config": {"training": {"lr": %s}}}' % raw
    r = c.post("/jobs", content=body, headers={**AUTH, "content-type": "application/json"})
    assert r.status_code == 422, r.text
    detail = r.json()["detail"][0]
    assert detail["loc"] == ["body", "config", "training", "lr"] and "finite" in detail["msg"]
    assert "input" not in detail  # what the client sent is not echoed back
    assert store.list()[1] == 0


def test_the_per_job_time_limit_is_a_validated_field():
    assert parse_config({"resources": {"max_runtime_s": 60}}).resources.max_runtime_s == 60
    with pytest.raises(ConfigError, match="resources.max_runtime_s"):
        parse_config({"resources": {"max_runtime_s": 0}})


def test_weak_tokens_are_refused_in_development_mode_too(tmp_path):
    with pytest.raises(ValueError, match="too weak"):
        ServiceSettings(api_token="x", dev=True, state_dir=tmp_path)
    assert len(ServiceSettings(dev=True, state_dir=tmp_path).token) >= 32


# -- uploads to predict ------------------------------------------------------------
@pytest.fixture()
def finished(tmp_path):
    """A service whose one job 'succeeded' (its run folder holds results.json only: uploads are refused before any model loads)."""
    app = create_app(ServiceSettings(api_token=TOKEN, state_dir=tmp_path / "state", max_decoded_bytes=64 * 1024 * 1024, max_files=3))
    app.dependency_overrides[get_runner] = FakeRunner
    with TestClient(app, raise_server_exceptions=False) as c:
        store = app.state.store
        job = store.create(tiny_job())
        store.claim_next("me")
        run = tmp_path / "job" / "run"
        run.mkdir(parents=True)
        (run / "results.json").write_text("{}")
        store.set_submission(job.id, submission_id="ddray-x", job_dir=str(run.parent), run_location=str(run))
        store.finish(job.id, "succeeded")
        yield c, job.id


def test_a_decompression_bomb_is_refused_from_its_headers(finished, tmp_path):
    import io
    import resource

    import numpy as np

    c, job_id = finished
    buf = io.BytesIO()
    np.savez_compressed(buf, x=np.zeros((4096, 1, 256, 256), dtype="float32"))  # 1 GiB of zeros in about 1 MB
    assert len(buf.getvalue()) < 2 * 1024 * 1024
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    r = c.post(f"/jobs/{job_id}/predict", files={"files": ("bomb.npz", buf.getvalue())}, headers=AUTH)
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert r.status_code == 422, r.text
    assert "DDRAY_MAX_DECODED_BYTES" in r.json()["detail"] and "bomb.npz" in r.json()["detail"]
    assert grown_mib < 200, f"peak memory grew by {grown_mib:.0f} MiB"  # the 1 GiB array was never decoded
    assert "ddray-predict-" not in r.text  # no private temp path in the message


def test_an_image_bomb_and_too_many_files_are_refused(finished):
    import io

    from PIL import Image

    c, job_id = finished
    png = io.BytesIO()
    Image.new("L", (9000, 9000)).save(png, format="PNG")  # 81 Mpixel, small on disk
    r = c.post(f"/jobs/{job_id}/predict", files={"files": ("big.png", png.getvalue())}, headers=AUTH)
    assert r.status_code == 422 and "big.png" in r.json()["detail"], r.text
    r = c.post(f"/jobs/{job_id}/predict", files=[("files", (f"a{i}.png", b"x")) for i in range(4)], headers=AUTH)
    assert r.status_code == 413 and "DDRAY_MAX_FILES" in r.json()["detail"], r.text
    r = c.post(f"/jobs/{job_id}/predict", files={"files": ("obj.npz", _object_npz())}, headers=AUTH)
    assert r.status_code == 422 and "objects" in r.json()["detail"], r.text


def _object_npz() -> bytes:
    import io

    import numpy as np

    buf = io.BytesIO()
    np.savez(buf, x=np.array([{"a": 1}], dtype=object))
    return buf.getvalue()


# -- data sets too large for memory, told from headers --------------------------------
def _bomb_npz(path) -> None:
    import numpy as np

    np.savez_compressed(path, x=np.zeros((2048, 1, 256, 256), dtype="uint8"), y=np.zeros(2048, dtype="int64"))  # 128 MiB raw, 512 MiB as float32


def test_a_data_set_too_large_for_memory_is_refused_before_loading(tmp_path, monkeypatch):
    from ddray.data import DataError, load_dataset

    _bomb_npz(tmp_path / "big.npz")
    config = parse_config({"dataset": {"source": "npz", "path": str(tmp_path / "big.npz")}})
    monkeypatch.setenv("DDRAY_MAX_DATASET_BYTES", str(256 * 1024**2))
    with pytest.raises(DataError, match="DDRAY_MAX_DATASET_BYTES"):
        load_dataset(config.dataset, seed=0, grid=[2, 2])
    synthetic = parse_config({"dataset": {"source": "synthetic", "samples": 100_000, "size": [256, 256]}})
    with pytest.raises(DataError, match=r"about 24\.4 GiB"):
        load_dataset(synthetic.dataset, seed=0, grid=[2, 2])


def test_the_service_refuses_a_too_large_data_set_at_submission(tmp_path, monkeypatch):
    monkeypatch.setenv("DDRAY_MAX_DATASET_BYTES", str(256 * 1024**2))
    (tmp_path / "data").mkdir()
    _bomb_npz(tmp_path / "data" / "big.npz")
    app = create_app(ServiceSettings(api_token=TOKEN, state_dir=tmp_path / "state", data_roots=str(tmp_path / "data")))
    app.dependency_overrides[get_runner] = FakeRunner
    with TestClient(app) as c:
        r = c.post("/jobs", json={"config": tiny_job(source="npz", path="big.npz")}, headers=AUTH)
        assert r.status_code == 422, r.text
        detail = r.json()["detail"][0]
        assert detail["loc"] == ["body", "config", "dataset"] and "DDRAY_MAX_DATASET_BYTES" in detail["msg"]
        assert app.state.store.list()[1] == 0
