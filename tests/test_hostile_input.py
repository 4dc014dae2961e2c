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
from api.testing import FakeRunner, tiny_job
from ddray.config import ConfigError, parse_config

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
