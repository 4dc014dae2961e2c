"""A sweep on Ray: every combination of a ``sweep:`` section, one after another, on one Ray instance.

Ray starts (or is joined) once (:func:`~ddray.orchestration.warm_runs.warm_runs`); each run is an
ordinary :func:`ddray.orchestration.driver.run`, whose ``ray_session`` finds Ray up and leaves it
running. Before any run starts, every combination is checked: its config (when it was parsed), its data paths and sizes, and
whether its grid fits its images (each distinct dataset section is loaded once for that).
Restarted with the same output folder, a sweep skips the runs whose ``results.json`` exists
and resumes an interrupted run from its finished subdomains. Each run leaves its started
subdomain workers to the next, which trains on them: no process start and ``import torch`` per run.
"""

from __future__ import annotations

import json
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console

from ddray import sweep as plan_
from ddray.config import RunConfig
from ddray.decomposition import check_fits
from ddray.orchestration.driver import check_data, load_data, run
from ddray.orchestration.warm_runs import warm_runs
from ddray.run_dir import RunDirError, check_run_id, new_run_id
from ddray.storage import copy_file, join, run_prefix, storage_base, write_json


def run_sweep(
    config: RunConfig,
    output_dir: str | Path,
    sweep_id: str | None = None,
    *,
    address: str | None = None,
    num_cpus: int | None = None,
    console: Console | None = None,
) -> list[dict[str, Any]]:
    """Run every combination into ``output_dir/runs/<name>/`` and write sweep.csv/.md/.png/.json; returns the table rows.

    ``sweep_id`` (default ``<folder name>-<UTC time>-<hex>``, kept in sweep.json across restarts) names the
    sweep's storage prefix ``<storage base>/<sweep_id>``; its runs are stored under ``<prefix>/runs/<name>``.
    """
    console = console or Console(stderr=True)
    out = Path(output_dir).resolve()
    runs = plan_.plan(config)
    preflight(runs)  # before anything is written or started
    sweep_id = _claim(config, out, sweep_id)
    prefix = run_prefix(storage_base(config.storage), sweep_id)
    if prefix:  # every run under the sweep's prefix, as in the output folder
        runs = [plan_.SweepRun(r.name, r.setting, r.config.model_copy(update={"storage": join(prefix, plan_.RUNS)})) for r in runs]
    console.print(f"[bold]ddray sweep[/]: {len(runs)} runs of {len(config.sweep or {})} swept keys into {out}")
    status = {r.name: ("done" if (r.folder(out) / "results.json").exists() else "pending") for r in runs}
    finished: list[tuple[dict[str, Any], dict[str, Any]]] = []
    started = time.time()
    try:
        pending = any(state != "done" for state in status.values())
        with warm_runs(address, num_cpus=num_cpus) if pending else nullcontext():  # all done: no Ray
            for k, r in enumerate(runs, 1):
                folder = r.folder(out)
                label = f"{k}/{len(runs)} {r.name} ({', '.join(f'{key}={v}' for key, v in r.setting.items())})"
                if status[r.name] == "done":
                    console.print(f"[bold]ddray sweep[/]: run {label}: finished before, skipped")
                else:
                    resume = (folder / "config.yaml").exists()
                    console.print(f"[bold]ddray sweep[/]: run {label}" + (": resuming" if resume else ""))
                    status[r.name] = "running"
                    _write_state(out, config, sweep_id, runs, status, started, current=r.name)
                    run(r.config, folder, r.name if not resume else None, resume=resume, console=console, keep_warm=True)
                    status[r.name] = "done"
                finished.append((r.setting, json.loads((folder / "results.json").read_text())))
                _write_state(out, config, sweep_id, runs, status, started)
    except BaseException as err:
        for name, state in status.items():
            if state == "running":
                status[name] = "failed"
                console.print(
                    f"[red]ddray sweep[/]: run {name} ended by {type(err).__name__}: {err}; finished runs are kept, "
                    f"the same command again continues with this one",
                    highlight=False,
                )
        _write_state(out, config, sweep_id, runs, status, started, rows=_reports(config, finished, out) if finished else None)
        raise
    rows = _reports(config, finished, out)
    _write_state(out, config, sweep_id, runs, status, started, rows=rows)
    if prefix:
        for name in (plan_.SWEEP_CONFIG, plan_.SWEEP_JSON, plan_.SWEEP_CSV, plan_.SWEEP_MD, plan_.SWEEP_PNG):
            if (out / name).exists():
                copy_file(str(out / name), join(prefix, name))
    plan_.print_table(rows, Console())
    console.print(f"[bold]ddray sweep[/]: table in {out / plan_.SWEEP_MD}, plot in {out / plan_.SWEEP_PNG}" + (f"; stored in {prefix}" if prefix else ""))
    return rows


def preflight(runs: list[plan_.SweepRun]) -> None:
    """What can fail in a run because of its input, for every run, before the first one starts: data
    paths and sizes, and whether each grid fits the images (each distinct dataset section loaded once)."""
    shapes: dict[str, tuple[int, ...]] = {}
    for r in runs:
        try:
            check_data(r.config)
            key = json.dumps(r.config.dataset.model_dump(mode="json"), sort_keys=True)
            if key not in shapes:
                shapes[key] = tuple(load_data(r.config).spatial_shape)
            check_fits(shapes[key], r.config.decomposition.grid, r.config.decomposition.overlap)
        except Exception as err:
            from ddray.errors import USER_ERRORS

            if isinstance(err, USER_ERRORS):
                raise type(err)(f"sweep run {r.name} ({', '.join(f'{k}={v}' for k, v in r.setting.items())}): {err}") from None
            raise


def _claim(config: RunConfig, out: Path, sweep_id: str | None) -> str:
    """The sweep's id; writes sweep.yaml into a new output folder, or checks that an existing one holds this sweep."""
    saved = out / plan_.SWEEP_CONFIG
    if saved.exists():
        before = RunConfig.model_validate(yaml.safe_load(saved.read_text()))
        if before.model_dump() != config.model_dump():
            raise RunDirError(f"{out} holds a different sweep (its {plan_.SWEEP_CONFIG}); restart with that config or use a new --output")
        known = (json.loads((out / plan_.SWEEP_JSON).read_text()) if (out / plan_.SWEEP_JSON).exists() else {}).get("id")
        if known and sweep_id and known != sweep_id:
            raise RunDirError(f"{out} belongs to sweep {known!r}, not {sweep_id!r}")
        return known or check_run_id(sweep_id or new_run_id(out.name))
    if out.exists() and any(out.iterdir()):
        raise RunDirError(f"{out} is not empty and holds no sweep; give a new or empty --output")
    sweep_id = check_run_id(sweep_id) if sweep_id else new_run_id(out.name)
    out.mkdir(parents=True, exist_ok=True)
    saved.write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
    write_json(out / plan_.SWEEP_JSON, {"kind": "sweep", "id": sweep_id})  # the id a restart keeps
    return sweep_id


def _reports(config: RunConfig, finished: list[tuple[dict[str, Any], dict[str, Any]]], out: Path) -> list[dict[str, Any]]:
    return plan_.records(plan_.write_reports(config, finished, out))


def _write_state(
    out: Path,
    config: RunConfig,
    sweep_id: str,
    runs: list[plan_.SweepRun],
    status: dict[str, str],
    started: float,
    *,
    current: str | None = None,
    rows: list[dict[str, Any]] | None = None,
) -> None:
    """sweep.json: the sweep's id, keys, each run's setting and status, and (at the end) the table;
    progress.json: the phase the job service shows (``sweep 3/9 grid-2x2_seed-0``)."""
    done = sum(s == "done" for s in status.values())
    phase = f"sweep {[r.name for r in runs].index(current) + 1}/{len(runs)} {current}" if current else ("done" if done == len(runs) else "stopped")
    write_json(out / "progress.json", {"phase": phase, "started": started, "updated": time.time()})
    write_json(
        out / plan_.SWEEP_JSON,
        {
            "kind": "sweep",
            "id": sweep_id,
            "keys": list(config.sweep or {}),
            "setting_keys": plan_.setting_keys(config),
            "phase": phase,
            "done": done,
            "total": len(runs),
            "started": started,
            "updated": time.time(),
            "runs": [{"name": r.name, "setting": r.setting, "status": status[r.name], "folder": f"{plan_.RUNS}/{r.name}"} for r in runs],
            "table": rows,
        },
    )
