"""Sweeps: combinations, dotted keys, validation before any run, the table, markdown and plot; one real small sweep."""

from __future__ import annotations

import json
import math
import time

import numpy as np
import pandas as pd
import pytest

from ddray import combinations, sweep
from ddray.config import ConfigError, parse_config

TINY = {
    "dataset": {"source": "digits", "image_size": [16, 16], "limit": 400},
    "decomposition": {"grid": [2, 2]},
    "local_model": {"name": "small_cnn", "width": 0.25},
    "training": {"epochs": 1, "batch_size": 64},
    "aggregation": {"methods": ["dnn", "average", "vote"], "dnn": {"epochs": 5}},
    "resources": {"cpus_per_subdomain": 1},
}


def with_sweep(values: dict, **base) -> dict:
    return {**TINY, **base, "sweep": values}


# -- combinations and dotted keys ----------------------------------------------------
def test_expand_gives_every_combination_last_key_fastest():
    out = combinations.expand({"decomposition.grid": [[1, 1], [2, 2]], "seed": [0, 1, 2]})
    assert len(out) == 6
    assert out[0] == {"decomposition.grid": [1, 1], "seed": 0}
    assert out[1] == {"decomposition.grid": [1, 1], "seed": 1}
    assert out[3] == {"decomposition.grid": [2, 2], "seed": 0}


def test_set_dotted_sets_nested_keys_and_list_values_without_touching_the_input():
    base = {"decomposition": {"grid": [2, 2], "overlap": 0}, "tune": None, "seed": 0}
    out = combinations.apply(base, {"decomposition.grid": [4, 4], "tune.space.lr": {"choice": [0.1]}, "seed": 3})
    assert out == {"decomposition": {"grid": [4, 4], "overlap": 0}, "tune": {"space": {"lr": {"choice": [0.1]}}}, "seed": 3}
    assert base == {"decomposition": {"grid": [2, 2], "overlap": 0}, "tune": None, "seed": 0}


def test_plan_gives_each_run_its_own_config_and_name():
    config = parse_config(with_sweep({"decomposition.grid": [[1, 1], [4, 4]], "training.lr": [0.01], "seed": [0, 1]}))
    runs = sweep.plan(config)
    assert [r.name for r in runs] == [
        "grid-1x1_lr-0.01_seed-0", "grid-1x1_lr-0.01_seed-1", "grid-4x4_lr-0.01_seed-0", "grid-4x4_lr-0.01_seed-1",
    ]
    assert [(r.config.decomposition.grid, r.config.seed, r.config.training.lr) for r in runs][-1] == ([4, 4], 1, 0.01)
    assert all(r.config.sweep is None and r.config.dataset == config.dataset for r in runs)
    assert sweep.setting_keys(config) == ["decomposition.grid", "training.lr"]


def test_run_names_use_full_keys_when_last_parts_clash_and_fall_back_when_too_long():
    names = combinations.run_names([{"training.epochs": 1, "baselines.epochs": 2}])
    assert names == ["training.epochs-1_baselines.epochs-2"]
    long = [{"dataset.kind": "x" * 80}, {"dataset.kind": "y"}]
    assert combinations.run_names(long) == ["run-000", "kind-y"]
    assert combinations.run_names([{"compare": ["global", "coherent"]}, {"compare": []}]) == ["compare-global-coherent", "compare-none"]


# -- validation before any run -----------------------------------------------------
@pytest.mark.parametrize(
    "values, expected",
    [
        ({"decomposition.gird": [[2, 2]]}, ["sweep.decomposition.gird", "decomposition has no 'gird'", "grid, overlap"]),
        ({"trainig.lr": [0.1]}, ["sweep.trainig.lr", "the config has no 'trainig'"]),
        ({"seed.x": [1]}, ["seed is a value, not a section"]),
        ({"seed": []}, ["sweep.seed: give a non-empty list"]),
        ({"seed": 3}, ["sweep.seed"]),
        ({"storage": ["/tmp/x"]}, ["'storage' cannot be swept"]),
        ({"dataset.path": ["a.npz"]}, ["'dataset.path' cannot be swept"]),
        ({"sweep.seed": [[1]]}, ["cannot sweep itself"]),
    ],
)
def test_bad_keys_are_named(values, expected):
    with pytest.raises(ConfigError) as err:
        parse_config(with_sweep(values))
    for text in expected:
        assert text in str(err.value)


def test_a_bad_value_names_the_combination_and_the_key():
    with pytest.raises(ConfigError) as err:
        parse_config(with_sweep({"training.epochs": [1, 0], "seed": [0, 1]}))
    message = str(err.value)
    assert "sweep combination 3 of 4 (training.epochs=0, seed=0): training.epochs: Input should be greater than or equal to 1" in message
    assert "combination 4 of 4 (training.epochs=0, seed=1)" in message and "combination 1 of 4" not in message


def test_limits_apply_to_every_combination_and_to_the_number_of_runs(monkeypatch):
    with pytest.raises(ConfigError, match=r"decomposition.grid=\[100, 100\]\).*above the limit 4096"):
        parse_config(with_sweep({"decomposition.grid": [[2, 2], [100, 100]]}))
    monkeypatch.setenv("DDRAY_MAX_SWEEP_RUNS", "5")
    with pytest.raises(ConfigError, match="6 combinations is above the limit 5 .set DDRAY_MAX_SWEEP_RUNS"):
        parse_config(with_sweep({"decomposition.grid": [[1, 1], [2, 2]], "seed": [0, 1, 2]}))


def test_a_grid_that_does_not_fit_the_images_fails_before_anything_is_written(tmp_path):
    from ddray.decomposition import DecompositionError
    from ddray.orchestration.sweep import run_sweep

    config = parse_config(with_sweep({"decomposition.grid": [[2, 2], [32, 32]]}))
    with pytest.raises(DecompositionError, match=r"sweep run grid-32x32 \(decomposition.grid=\[32, 32\]\)"):
        run_sweep(config, tmp_path / "out")  # a 16x16 image cannot hold 32x32 subdomains; no Ray is started
    assert not (tmp_path / "out").exists()


def test_cli_refuses_to_mix_run_and_sweep(tmp_path, capsys):
    import yaml

    from ddray.cli import main

    (tmp_path / "s.yaml").write_text(yaml.safe_dump(with_sweep({"seed": [0, 1]})))
    (tmp_path / "plain.yaml").write_text(yaml.safe_dump(TINY))
    assert main(["validate", str(tmp_path / "s.yaml")]) == 0
    assert main(["run", str(tmp_path / "s.yaml"), "--output", str(tmp_path / "r")]) == 2
    assert "ddray sweep" in capsys.readouterr().err
    assert main(["sweep", str(tmp_path / "plain.yaml"), "--output", str(tmp_path / "r")]) == 2
    assert "no sweep: section" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_python_api_keeps_runs_and_sweeps_apart(tmp_path):
    import ddray

    with pytest.raises(ConfigError, match="run_sweep"):
        ddray.run(with_sweep({"seed": [0, 1]}), str(tmp_path / "r"))
    with pytest.raises(ConfigError, match="no sweep: section"):
        ddray.run_sweep(TINY, str(tmp_path / "s"))
    assert not (tmp_path / "r").exists() and not (tmp_path / "s").exists()


# -- the table, markdown and plot ------------------------------------------------------
def fake_results(dnn: float, average: float, vote: float, wall: float, global_acc: float | None = None) -> dict:
    out = {
        "aggregation": {"dnn": {"test_accuracy": dnn}, "average": {"test_accuracy": average}, "vote": {"test_accuracy": vote}},
        "timings_s": {"local_wall": wall, "aggregation_wall": 1.0, "total_wall": wall + 1.0},
    }
    if global_acc is not None:
        out["baselines"] = {"global": {"test_accuracy": global_acc}}
        out["timings_s"]["baselines_wall"] = 20.0
    return out


ACC = {(1, 0): 0.80, (1, 1): 0.84, (1, 2): 0.82, (2, 0): 0.90, (2, 1): 0.93, (2, 2): 0.96}


def fake_runs() -> list[tuple[dict, dict]]:
    return [
        ({"decomposition.grid": [g, g], "seed": s}, fake_results(ACC[g, s], ACC[g, s] - 0.1, ACC[g, s] - 0.2, 10.0 * g + s, 0.95))
        for g in (1, 2)
        for s in (0, 1, 2)
    ]


def test_table_has_the_columns_of_the_issue_and_mean_std_over_seeds():
    frame = sweep.table(["decomposition.grid"], fake_runs())
    assert list(frame.columns) == [
        "decomposition.grid", "n_seeds",
        "dnn_mean", "dnn_std", "average_mean", "average_std", "vote_mean", "vote_std", "global_mean", "global_std",
        "local_wall_mean", "aggregation_wall_mean", "baselines_wall_mean", "total_wall_mean",
    ]
    assert frame["decomposition.grid"].tolist() == ["[1, 1]", "[2, 2]"] and frame["n_seeds"].tolist() == [3, 3]
    two = [ACC[2, s] for s in range(3)]
    row = frame.iloc[1]
    assert row["dnn_mean"] == pytest.approx(np.mean(two)) and row["dnn_std"] == pytest.approx(np.std(two, ddof=1)) == pytest.approx(0.03)
    assert row["vote_mean"] == pytest.approx(np.mean(two) - 0.2) and row["global_std"] == pytest.approx(0.0)
    assert row["local_wall_mean"] == pytest.approx(21.0) and row["total_wall_mean"] == pytest.approx(22.0)


def test_one_seed_has_a_nan_std_and_only_seed_sweeps_give_one_row():
    runs = [({"training.lr": lr}, fake_results(0.5 + lr, 0.4, 0.3, 5.0)) for lr in (0.1, 0.2)]
    frame = sweep.table(["training.lr"], runs)
    assert frame["n_seeds"].tolist() == [1, 1] and frame["dnn_std"].isna().all()
    assert "global_mean" not in frame.columns and "baselines_wall_mean" not in frame.columns
    seeds_only = sweep.table([], [({"seed": s}, fake_results(0.5 + 0.1 * s, 0.4, 0.3, 5.0)) for s in range(3)])
    assert len(seeds_only) == 1 and seeds_only["n_seeds"].tolist() == [3] and seeds_only["dnn_mean"][0] == pytest.approx(0.6)
    assert sweep.records(frame)[0]["dnn_std"] is None  # JSON has no NaN


def test_reports_are_written_csv_md_png(tmp_path):
    config = parse_config(with_sweep({"decomposition.grid": [[1, 1], [2, 2]], "seed": [0, 1, 2]}))
    frame = sweep.write_reports(config, fake_runs(), tmp_path)
    back = pd.read_csv(tmp_path / "sweep.csv")
    assert back.columns.tolist() == frame.columns.tolist() and len(back) == 2
    assert json.loads(back["decomposition.grid"][1]) == [2, 2] and back["dnn_std"][1] == pytest.approx(0.03)
    md = (tmp_path / "sweep.md").read_text()
    assert "| decomposition.grid | n_seeds | dnn | average | vote | global | local_wall (s) |" in md
    assert f"| [2, 2] | 3 | {np.mean([ACC[2, s] for s in range(3)]):.4f} ± 0.0300 |" in md
    assert (tmp_path / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_x_axis_is_subdomains_else_the_first_swept_key():
    frame = sweep.table(["decomposition.grid"], fake_runs())
    label, xs, ticks = sweep.x_axis(frame, ["decomposition.grid"], [2, 2])
    assert label == "number of subdomains" and xs == [1.0, 4.0] and ticks == ["1 (1x1)", "4 (2x2)"]
    lr = sweep.table(["training.lr", "training.optimizer"], [({"training.lr": v, "training.optimizer": "adam"}, fake_results(0.5, 0.4, 0.3, 1)) for v in (0.1, 0.01)])
    assert sweep.x_axis(lr, ["training.lr", "training.optimizer"], [2, 2])[:2] == ("training.lr", [0.1, 0.01])
    opt = sweep.table(["training.optimizer"], [({"training.optimizer": v}, fake_results(0.5, 0.4, 0.3, 1)) for v in ("adam", "sgd")])
    assert sweep.x_axis(opt, ["training.optimizer"], [2, 2])[1:] == ([0.0, 1.0], ["adam", "sgd"])
    assert sweep.x_axis(sweep.table([], []), [], [4, 4])[1] == []


def test_a_restart_must_be_the_same_sweep(tmp_path):
    from ddray.orchestration.sweep import _claim
    from ddray.run_dir import RunDirError

    config = parse_config(with_sweep({"seed": [0, 1]}))
    first = _claim(config, tmp_path / "s", None)
    assert _claim(config, tmp_path / "s", None) == first  # the id is kept from the start
    with pytest.raises(RunDirError, match="belongs to sweep"):
        _claim(config, tmp_path / "s", "another-id")
    other = parse_config(with_sweep({"seed": [0, 1, 2]}))
    with pytest.raises(RunDirError, match="holds a different sweep"):
        _claim(other, tmp_path / "s", None)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x").write_text("")
    with pytest.raises(RunDirError, match="not empty"):
        _claim(config, tmp_path / "busy", None)


def test_a_failed_run_stops_the_sweep_keeps_what_finished_and_a_restart_continues(tmp_path, monkeypatch, capsys):
    """The runner's bookkeeping with the driver and Ray swapped out (the real thing is the Ray test below)."""
    from contextlib import contextmanager

    import ddray.orchestration.sweep as orchestration
    from ddray.errors import JobFailed

    calls = []

    @contextmanager
    def no_ray(address=None, **kw):
        calls.append("ray")
        yield

    def fake_run(config, folder, run_id=None, *, resume=False, console=None, keep_warm=False):
        assert keep_warm  # each run leaves its workers to the next
        calls.append((folder.name, resume))
        if config.seed == 1 and len(calls) < 4:
            (folder / "config.yaml").parent.mkdir(parents=True)
            (folder / "config.yaml").write_text("{}")
            raise JobFailed("subdomain 2 failed")
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "results.json").write_text(json.dumps(fake_results(0.5 + config.seed / 10, 0.4, 0.3, 2.0)))

    monkeypatch.setattr(orchestration, "warm_runs", no_ray)
    monkeypatch.setattr(orchestration, "run", fake_run)
    monkeypatch.setattr(orchestration, "preflight", lambda runs: None)
    config = parse_config(with_sweep({"seed": [0, 1, 2]}))
    out = tmp_path / "s"
    with pytest.raises(JobFailed):
        orchestration.run_sweep(config, out)
    state = json.loads((out / "sweep.json").read_text())
    assert [r["status"] for r in state["runs"]] == ["done", "failed", "pending"] and state["phase"] == "stopped"
    assert state["table"][0]["n_seeds"] == 1 and "run seed-1 ended by JobFailed: subdomain 2 failed" in capsys.readouterr().err
    rows = orchestration.run_sweep(config, out)  # the restart: seed 0 skipped, seed 1 resumed, seed 2 new
    assert calls == ["ray", ("seed-0", False), ("seed-1", False), "ray", ("seed-1", True), ("seed-2", False)]
    assert rows == json.loads((out / "sweep.json").read_text())["table"] and rows[0]["n_seeds"] == 3
    assert rows[0]["dnn_mean"] == pytest.approx(0.6) and rows[0]["dnn_std"] == pytest.approx(0.1)
    orchestration.run_sweep(config, out)  # nothing left to run: no Ray at all
    assert calls.count("ray") == 2


# -- one real sweep --------------------------------------------------------------
@pytest.mark.ray
@pytest.mark.timeout(600)
def test_a_small_sweep_on_ray_and_its_restart(ray_cluster, tmp_path):
    from ddray.orchestration.sweep import run_sweep

    config = parse_config(with_sweep({"decomposition.grid": [[1, 1], [2, 2]], "seed": [0, 1]}))
    out = tmp_path / "sweep"
    rows = run_sweep(config, out)
    names = ["grid-1x1_seed-0", "grid-1x1_seed-1", "grid-2x2_seed-0", "grid-2x2_seed-1"]
    assert sorted(p.name for p in (out / "runs").iterdir()) == names
    assert all((out / "runs" / n / "results.json").is_file() for n in names)
    assert json.loads((out / "runs" / "grid-2x2_seed-1" / "results.json").read_text())["config"]["seed"] == 1
    frame = pd.read_csv(out / "sweep.csv")
    assert frame["decomposition.grid"].tolist() == ["[1, 1]", "[2, 2]"] and frame["n_seeds"].tolist() == [2, 2]
    for method in ("dnn", "average", "vote"):
        accs = [json.loads((out / "runs" / n / "results.json").read_text())["aggregation"][method]["test_accuracy"] for n in names[2:]]
        assert frame[f"{method}_mean"][1] == pytest.approx(np.mean(accs)) and frame[f"{method}_std"][1] == pytest.approx(np.std(accs, ddof=1))
    assert [r["n_seeds"] for r in rows] == [2, 2] and (out / "sweep.md").is_file() and (out / "sweep.png").is_file()
    state = json.loads((out / "sweep.json").read_text())
    assert state["phase"] == "done" and [r["status"] for r in state["runs"]] == ["done"] * 4 and len(state["table"]) == 2

    # a restart skips finished runs; one whose results.json is gone is resumed from its saved subdomains
    (out / "runs" / "grid-2x2_seed-0" / "results.json").unlink()
    before = (out / "runs" / "grid-1x1_seed-0" / "results.json").stat().st_mtime_ns
    again = run_sweep(config, out)
    assert (out / "runs" / "grid-1x1_seed-0" / "results.json").stat().st_mtime_ns == before
    assert (out / "runs" / "grid-2x2_seed-0" / "results.json").is_file()
    assert [r["n_seeds"] for r in again] == [2, 2]
    assert math.isclose(again[0]["dnn_mean"], rows[0]["dnn_mean"])


@pytest.mark.ray
@pytest.mark.timeout(600)
def test_a_sweeps_next_run_trains_on_the_workers_of_the_one_before(ray_cluster, tmp_path):
    """No process start and import of torch per run: the workers stay up between a sweep's runs,
    give the very weights a fresh worker gives, and hold no CPU once the sweep is done."""
    import torch

    from ddray.orchestration import warm_pool
    from ddray.orchestration.sweep import run_sweep

    config = parse_config(with_sweep({"aggregation.dnn.epochs": [5, 6]}))  # the local phase is the same in both runs
    out = tmp_path / "sweep"
    run_sweep(config, out)
    first, second = (out / "runs" / n for n in ("epochs-5", "epochs-6"))

    def local_phase(run):
        progress = json.loads((run / "progress.json").read_text())
        return progress["phases"]["local_training"]["warm_workers"], {s["pid"] for s in progress["subdomains"].values()}

    (warm1, pids1), (warm2, pids2) = local_phase(first), local_phase(second)
    assert warm1 == 0 and warm2 == 2  # 4 subdomains on 2 CPUs: the second run took the first run's two workers ...
    assert len(pids1 | pids2) <= 2  # ... and started none: no third process ever trained
    for i in range(4):
        a, b = (torch.load(run / "checkpoints" / "local" / f"sub{i:03d}.pt", weights_only=True) for run in (first, second))
        assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"]), f"subdomain {i} differs on a reused worker"
    deadline = time.monotonic() + 60  # the last run kept no worker: every CPU is free again
    while ray_cluster.available_resources().get("CPU", 0) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert ray_cluster.available_resources().get("CPU", 0) == 2
    handle = warm_pool.pool()
    assert handle is not None and ray_cluster.get(handle.status.remote())["idle"] == 0
    ray_cluster.kill(handle)


# -- the REST service: a sweep is a job whose results are the table ------------------------
def test_a_sweep_job_through_the_routes(tmp_path):
    from fastapi.testclient import TestClient

    from api.deps import get_runner
    from api.main import create_app
    from api.runner import JobRunner
    from api.settings import ServiceSettings
    from service_doubles import FakeRunner

    token = "sweep-test-token-0123456789"
    auth = {"Authorization": f"Bearer {token}"}
    settings = ServiceSettings(api_token=token, state_dir=tmp_path / "state")
    app = create_app(settings)
    app.dependency_overrides[get_runner] = FakeRunner
    with TestClient(app) as client:
        r = client.post("/jobs", json={"config": with_sweep({"decomposition.gird": [[1, 1]]})}, headers=auth)
        assert r.status_code == 422 and "decomposition has no 'gird'" in r.text
        r = client.post("/jobs", json={"config": with_sweep({"decomposition.grid": [[1, 1], [2, 2]], "seed": [0, 1]})}, headers=auth)
        assert r.status_code == 201, r.text
        job_id = r.json()["id"]
        store = app.state.store

        class Jobs:
            def submit_job(self, **kw):
                self.sent = kw

        class Cluster:
            local, ready, jobs_ = False, True, Jobs()

            def jobs(self):
                return self.jobs_

        cluster = Cluster()
        JobRunner(settings, store, cluster=cluster)._submit(store.claim_next("me"))  # type: ignore[arg-type]
        entry = cluster.jobs_.sent["entrypoint"]
        assert " -m ddray sweep " in entry and f"--run-id {job_id}" in entry and "--output" in entry

        record = store.get(job_id)
        run = tmp_path / "state" / "jobs" / job_id / "run"
        run.mkdir(parents=True)
        config = parse_config(record.config)
        frame = sweep.write_reports(config, fake_runs(), run)
        (run / "sweep.json").write_text(json.dumps({"kind": "sweep", "id": job_id, "table": sweep.records(frame)}))
        store.finish(job_id, "succeeded", exit_code=0)

        results = client.get(f"/jobs/{job_id}/results", headers=auth).json()
        assert results["kind"] == "sweep" and [row["n_seeds"] for row in results["table"]] == [3, 3]
        assert results["table"][1]["dnn_std"] == pytest.approx(0.03)
        listing = client.get(f"/jobs/{job_id}/artifacts", headers=auth).json()["files"]
        assert {"sweep.csv", "sweep.md", "sweep.png", "sweep.json"} <= set(listing)
        r = client.get(f"/jobs/{job_id}/artifacts/sweep.csv", headers=auth)
        assert r.status_code == 200 and r.text.startswith("decomposition.grid,n_seeds,dnn_mean,dnn_std")
        r = client.post(f"/jobs/{job_id}/predict", files={"files": ("x.npz", b"x")}, headers=auth)
        assert r.status_code == 409 and "sweep" in r.json()["detail"]


def test_the_client_prints_a_sweep_table(capsys):
    from rich.console import Console

    frame = sweep.table(["decomposition.grid"], fake_runs())
    sweep.print_table(sweep.records(frame), Console(width=200))
    out = capsys.readouterr().out
    assert "[2, 2]" in out and "± 0.0300" in out and "n_seeds" in out


@pytest.mark.ray
@pytest.mark.cluster
@pytest.mark.timeout(400)
def test_a_sweep_job_on_a_real_service(tmp_path):
    """``ddray serve`` with its own Ray head runs a sweep as one Ray job; its results are the table."""
    import os
    import subprocess
    import sys
    import time

    from service_doubles import Service, cleanup_state, tiny_job

    (tmp_path / "data").mkdir()
    svc = Service(tmp_path / "state", tmp_path / "data", extra_args=["--ray-num-cpus", "2", "--ray-object-store-mb", "200"])
    svc.start(timeout=150)
    try:
        config = {**tiny_job(epochs=1), "aggregation": {"methods": ["dnn", "average"], "dnn": {"epochs": 5}}, "sweep": {"seed": [0, 1]}}
        with svc.client() as c:
            job_id = c.post("/jobs", json={"config": config}).json()["id"]
            deadline = time.monotonic() + 300
            while (job := c.get(f"/jobs/{job_id}").json())["status"] not in ("succeeded", "failed", "cancelled"):
                assert time.monotonic() < deadline, job
                time.sleep(1)
            assert job["status"] == "succeeded", (job, c.get(f"/jobs/{job_id}/logs").text[-3000:])
            assert job["results"]["sweep"]["runs_done"] == 2 and "dnn_mean" in job["results"]["sweep"]["settings"][0]  # the job list's figures
            results = c.get(f"/jobs/{job_id}/results").json()
            assert results["kind"] == "sweep" and results["id"] == job_id and results["table"][0]["n_seeds"] == 2
            assert results["table"][0]["dnn_std"] is not None and [r["status"] for r in results["runs"]] == ["done", "done"]
            files = c.get(f"/jobs/{job_id}/artifacts").json()["files"]
            assert {"sweep.csv", "sweep.md", "sweep.png", "runs/seed-0/results.json", "runs/seed-1/results.json"} <= set(files)
        env = {**os.environ, "DDRAY_URL": svc.url, "DDRAY_API_TOKEN": svc.token}
        out = subprocess.run([sys.executable, "-m", "ddray", "results", job_id], env=env, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0 and "n_seeds" in out.stdout and "±" in out.stdout, out
    finally:
        svc.stop()
        cleanup_state(tmp_path / "state", svc.token)
