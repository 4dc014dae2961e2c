"""ddray suggest: the pure choices, the CLI (output validates), POST /suggest, and runs of its output
on the bundled digits at 64x64 and on a 3D volume set (the shared Ray)."""

from __future__ import annotations

import yaml
import pytest

from ddray.config import ConfigError, parse_config
from ddray.suggest import SuggestError, choose_grid, choose_resources, predict_wall, suggest, width_cap

DIGITS = {"dataset": {"source": "digits", "image_size": [64, 64], "limit": 400}}
VOLUMES = {"dataset": {"source": "synthetic", "kind": "blobs", "samples": 160, "size": [8, 32, 32], "classes": 3}}


def test_grid_overlap_resources_and_wall_rules():
    assert choose_grid((64, 64)) == ([4, 4], 2)
    assert choose_grid((32, 32)) == ([2, 2], 2)
    assert choose_grid((8, 32, 32)) == ([1, 2, 2], 2)
    assert choose_grid((8, 8)) == ([2, 1], 0)  # too small for the rule: still two 4 px pieces, no overlap
    assert choose_grid((256, 256)) == ([4, 4], 2)  # at most 4 cuts per axis
    assert choose_resources(16, 2, 0) == (1.0, 0.0, 2)  # waves of two
    assert choose_resources(2, 8, 0) == (4.0, 0.0, 2)  # all at once, the spare CPUs as threads
    assert choose_resources(4, 8, 1) == (2.0, 0.25, 4)  # a quarter GPU each
    assert width_cap(4) == 1.0 and width_cap(16) == 0.5 and width_cap(64) == 0.25
    assert predict_wall(2.0, 10, 16, 2) == pytest.approx(20.0 + 8 * 10 * 2.0 + 5.0)


def test_bad_input_names_the_key():
    with pytest.raises(SuggestError, match="dataset:"):
        suggest({"training": {}})
    with pytest.raises(ConfigError, match="dataset.source"):
        suggest({"dataset": {"source": "tiff"}})
    with pytest.raises(SuggestError, match="--hours"):
        suggest(DIGITS, hours=-1)


def test_cli_prints_a_config_that_validates(tmp_path, capsys):
    from ddray.cli import main

    src, out = tmp_path / "in.yaml", tmp_path / "suggested.yaml"
    src.write_text(yaml.safe_dump(DIGITS))
    assert main(["suggest", str(src), "--cpus", "2", "--hours", "0.02", "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed == out.read_text() and "# predicted wall time:" in printed
    assert main(["validate", str(out)]) == 0
    cfg = parse_config(yaml.safe_load(printed))
    assert cfg.decomposition.grid == [4, 4] and cfg.local_model.width <= 0.5 and cfg.resources.cpus_per_subdomain == 1
    assert cfg.dataset.image_size == [64, 64] and cfg.dataset.limit == 400  # the dataset section is kept
    assert main(["suggest", str(tmp_path / "missing.yaml")]) == 2


def test_rest_suggest_validates_confines_and_answers(tmp_path):
    from fastapi.testclient import TestClient

    from api.deps import get_runner
    from api.main import create_app
    from api.settings import ServiceSettings
    from service_doubles import FakeRunner

    token = "suggest-test-token-0123456789"
    root = tmp_path / "data"
    root.mkdir()
    app = create_app(ServiceSettings(api_token=token, state_dir=tmp_path / "state", data_roots=[root]))
    fake = FakeRunner()
    app.dependency_overrides[get_runner] = lambda: fake  # no Ray: the route never needs the runner
    auth = {"Authorization": f"Bearer {token}"}
    with TestClient(app) as client:
        assert client.post("/suggest", json={"config": DIGITS}).status_code == 401
        r = client.post("/suggest", json={"config": {"training": {}}}, headers=auth)
        assert r.status_code == 422 and r.json()["detail"][0]["loc"][-1] == "dataset"
        outside = {"dataset": {"source": "npz", "path": str(tmp_path / "elsewhere.npz")}}
        r = client.post("/suggest", json={"config": outside}, headers=auth)
        assert r.status_code == 422 and r.json()["detail"][0]["loc"][-2:] == ["dataset", "path"]
        r = client.post("/suggest", json={"config": DIGITS, "cpus": 2, "hours": 0.02}, headers=auth)
        assert r.status_code == 200, r.text
        body = r.json()
        assert parse_config(yaml.safe_load(body["config_yaml"])).model_dump(mode="json") == body["config"]
        assert body["data"]["shape"] == [64, 64] and body["predicted_wall_s"] > 0 and len(body["candidates"]) >= 3


@pytest.mark.ray
@pytest.mark.parametrize("raw", [DIGITS, VOLUMES], ids=["digits64", "volumes3d"])
def test_suggested_config_runs(ray_cluster, tmp_path, raw):
    from ddray.orchestration.driver import run

    result = suggest(raw, cpus=2, hours=0.001)  # a budget below one epoch: 1 epoch, the cheapest model
    assert result.config.training.epochs == 1
    results = run(result.config, tmp_path / "run")
    assert len(results["local"]) == result.config.decomposition.num_subdomains
    assert results["aggregation"]["dnn"]["test_accuracy"] >= 0.0
