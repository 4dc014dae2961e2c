"""The driver: one ddray job from config to results folder.

Order matters for the user: everything that can be checked without Ray
(config, data, decomposition, output folder) is checked first, so bad input
fails in seconds and never half-way through a training.
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import ray
from rich.console import Console

from ddray import report
from ddray.aggregation import accuracy, average_predict, stack_probabilities, vote_predict
from ddray.config import RunConfig
from ddray.data import DataError, Dataset, load_dataset
from ddray.decomposition import Subdomain, decompose
from ddray.errors import JobFailed
from ddray.orchestration.cluster import check_feasible, ray_session
from ddray.orchestration.coarse import run_coarse_step
from ddray.orchestration.local_phase import LocalTask, run_local_phase
from ddray.progress import ProgressTracker
from ddray.run_dir import RunDir, RunDirError
from ddray.storage import is_uri, local_copy, storage_base, write_json
from ddray.training.local import LocalResult
from ddray.training.spec import dnn_spec, training_spec


def prepare_run_dir(config: RunConfig, output_dir: str | Path, resume: bool, run_id: str | None = None) -> RunDir:
    """Check the output folder, run id and storage prefix; write nothing.

    A fresh run gets ``run_id`` (default ``<folder name>-<UTC time>-<random hex>``) and the prefix
    ``<storage base>/<run_id>``, which must be empty; an existing run folder is never overwritten.
    A resumed run keeps the run id and prefix of its run.json, and its config must be unchanged.
    """
    if not resume:
        return RunDir.fresh(output_dir, storage_base(config.storage), run_id)
    run_dir = RunDir.existing(output_dir, run_id)
    saved = run_dir.read_config()
    if saved.model_dump() != config.model_dump():
        raise RunDirError(
            f"cannot resume {run_dir.root}: its config.yaml differs from the given config; "
            f"resume with the saved config (ddray run --resume {run_dir.root}) or use a new --output"
        )
    return run_dir


def load_data(config: RunConfig) -> Dataset:
    """The run's data set; a ``dataset.path`` URI (s3://, gs://, file://) is fetched once, here on the driver."""
    dataset_cfg = config.dataset
    if not (dataset_cfg.path and is_uri(dataset_cfg.path)):
        return load_dataset(dataset_cfg, seed=config.seed, grid=config.decomposition.grid, overlap=config.decomposition.overlap)
    uri = dataset_cfg.path
    with tempfile.TemporaryDirectory(prefix="ddray-data-") as cache:  # the arrays are in memory afterwards
        local = local_copy(uri, cache)
        try:
            return load_dataset(
                dataset_cfg.model_copy(update={"path": str(local)}),
                seed=config.seed,
                grid=config.decomposition.grid,
                overlap=config.decomposition.overlap,
            )
        except DataError as err:  # name the URI the user gave, not the temporary copy
            raise DataError(str(err).replace(str(local), uri)) from None


def run(
    config: RunConfig,
    output_dir: str | Path,
    run_id: str | None = None,
    *,
    address: str | None = None,
    resume: bool = False,
    console: Console | None = None,
    num_cpus: int | None = None,
) -> dict[str, Any]:
    """Run a whole ddray job and return the content of results.json.

    ``run_id`` names the run (default ``<output folder name>-<UTC time>-<6 hex>``); with a storage
    base (``config.storage`` or ``$DDRAY_STORAGE``) the run owns ``<base>/<run_id>/`` and its whole
    folder is copied there when it ends, however it ends.
    """
    started = time.perf_counter()
    console = console or Console(stderr=True)
    run_dir = prepare_run_dir(config, output_dir, resume, run_id)
    dataset = load_data(config)
    subdomains = decompose(dataset.spatial_shape, config.decomposition.grid, config.decomposition.overlap)
    if resume:
        run_dir.create()
    else:
        run_dir.claim(config)  # takes the storage prefix at once (run.json, config.yaml)
    write_json(run_dir.preprocessing, dataset.preprocessing.to_dict())
    write_json(run_dir.subdomains, [asdict(s) for s in subdomains])
    sizes = dataset.summary()
    console.print(
        f"[bold]ddray[/]: run {run_dir.run_id}: {sizes['train']} train / {sizes['val']} val / "
        f"{sizes['test']} test samples, shape {list(dataset.spatial_shape)}, "
        f"{dataset.num_classes} classes; {len(subdomains)} subdomains of grid {config.decomposition.grid}"
        + (f"; storage {run_dir.storage}" if run_dir.storage else "")
    )
    tracker = ProgressTracker(run_dir.progress, len(subdomains), console)
    try:
        with ray_session(address, num_cpus=num_cpus):
            results = _run_on_ray(config, run_dir, dataset, subdomains, tracker, started)
    except KeyboardInterrupt:  # Ctrl-C, or SIGTERM from `ddray cancel` (the CLI turns it into this)
        tracker.close("cancelled", error="interrupted; finished subdomains are kept, continue with ddray run --resume")
        _save_to_storage(run_dir, console, strict=False)
        raise
    except BaseException as err:
        tracker.close("failed", error=str(err) or type(err).__name__)
        _save_to_storage(run_dir, console, strict=False)
        raise
    tracker.close("done")
    try:
        _save_to_storage(run_dir, console, strict=True)
    except JobFailed as err:  # the run's promise includes its copy in storage
        tracker.close("failed", error=str(err))
        raise
    report.print_table(results, Console())
    console.print(f"[bold]ddray[/]: results in {run_dir.root}" + (f" and {run_dir.storage}" if run_dir.storage else ""))
    return results


def _save_to_storage(run_dir: RunDir, console: Console, *, strict: bool) -> None:
    """Copy the run folder to its storage prefix. A failed copy fails a finished run (``strict``);
    after a failure or cancellation it is reported beside the original error, which it never hides."""
    if not run_dir.storage:
        return
    try:
        copied = run_dir.save_to_storage()
    except Exception as err:  # noqa: BLE001 - reported, or turned into JobFailed below
        message = (
            f"copying run folder {run_dir.root} to its storage prefix {run_dir.storage} failed: {err}; "
            f"everything is kept in {run_dir.root}"
        )
        if strict:
            raise JobFailed(message) from None
        console.print(f"[red]error[/]: {message}", highlight=False)
        return
    console.print(f"[bold]ddray[/]: {copied} file(s) of {run_dir.root} copied to {run_dir.storage}")


def _run_on_ray(config: RunConfig, run_dir: RunDir, dataset: Dataset, subdomains: list[Subdomain], tracker: ProgressTracker, started: float) -> dict[str, Any]:
    res = config.resources
    slots = check_feasible(res.cpus_per_subdomain, res.gpus_per_subdomain)
    if config.compare:
        from ddray.orchestration.train_jobs import check_baselines_feasible

        check_baselines_feasible(config)  # before any training, not after the local phase
    spec = training_spec(config, num_classes=dataset.num_classes, in_channels=dataset.in_channels)

    finished: dict[int, tuple[dict[str, np.ndarray], dict]] = {}
    for sub in subdomains:
        if run_dir.local_result(sub.index).exists():
            finished[sub.index] = run_dir.load_local_result(sub.index)
            tracker.update({"subdomain": sub.index, "status": "restored", "test_accuracy": finished[sub.index][1]["test_accuracy"]})

    data_ref = ray.put(dataset.arrays())  # once, shared by every worker
    local_started = time.perf_counter()
    todo = [s for s in subdomains if s.index not in finished]
    tracker.phase("local_training", subdomains=len(subdomains), to_train=len(todo), workers=min(slots, max(1, len(todo))))

    # a resumed run adds the local-phase time of earlier sessions (up to their last finished
    # subdomain), so its speed-ups stay honest
    earlier = json.loads(run_dir.timings.read_text()).get("local_wall", 0.0) if run_dir.timings.exists() else 0.0

    def record_local_wall() -> float:
        wall = earlier + time.perf_counter() - local_started
        write_json(run_dir.timings, {"local_wall": wall})
        return wall

    def keep(result: LocalResult, where: dict) -> None:
        summary = {**result.summary(), "node_id": where.get("node_id"), "bounds": subdomains[result.subdomain].bounds}
        if "trial_id" in where:  # chosen by the Tune search
            summary.update(trial_id=where["trial_id"], tune_config=where.get("tune_config"))
        if result.model_state is None:
            raise JobFailed(f"subdomain {result.subdomain} finished without its model weights")
        run_dir.save_local_model(result.subdomain, result.model_state, result.spec, result.subdomain_spec)
        run_dir.save_local_result(result.subdomain, result.probabilities, summary)  # last: marks it done
        finished[result.subdomain] = (result.probabilities, summary)
        record_local_wall()

    tasks = [LocalTask(sub, spec, run_dir.state_file(sub.index)) for sub in todo]
    extra: dict[str, Any] = {}
    if config.tune is not None:
        from ddray.orchestration.tune import run_search

        tracker.phase("search", subdomains=len(subdomains), samples=config.tune.num_samples)
        extra["tune"] = run_search(config, run_dir, tasks, data_ref, slots=slots, on_event=tracker.update, on_result=keep)
    else:
        run_local_phase(
            tasks,
            data_ref,
            cpus=res.cpus_per_subdomain,
            gpus=res.gpus_per_subdomain,
            slots=slots,
            max_retries=res.max_retries,
            on_event=tracker.update,
            on_result=keep,
        )
    local_wall = record_local_wall()

    tracker.phase("aggregation", methods=config.aggregation.methods)
    agg_started = time.perf_counter()
    probs = {split: stack_probabilities([finished[s.index][0][split] for s in subdomains]) for split in ("train", "val", "test")}
    labels = {"train": dataset.y_train, "val": dataset.y_val, "test": dataset.y_test}
    aggregation = _aggregate(config, probs, labels, run_dir, res.cpus_per_subdomain)
    aggregation_wall = time.perf_counter() - agg_started

    timings = {"local_wall": round(local_wall, 3), "aggregation_wall": round(aggregation_wall, 3)}
    if config.compare:
        from ddray.orchestration.train_jobs import run_baselines  # issue 3: global / coherent / transfer

        tracker.phase("baselines", models=config.compare)
        baselines_started = time.perf_counter()
        extra["baselines"] = run_baselines(config, run_dir, dataset, subdomains, data_ref=data_ref)
        timings["baselines_wall"] = round(time.perf_counter() - baselines_started, 3)
    timings["total_wall"] = round(time.perf_counter() - started, 3)

    results: dict[str, Any] = {
        "local": [finished[s.index][1] for s in subdomains],
        "aggregation": aggregation,
        **extra,
        "timings_s": timings,
        # class_names are read by predict; the fingerprint (sha256 of every split's model inputs and
        # labels) tells whether two runs trained on the same data
        "dataset": {**dataset.summary(), "fingerprint": dataset.fingerprint()},
        "decomposition": {"grid": config.decomposition.grid, "overlap": config.decomposition.overlap, "subdomains": len(subdomains)},
        "config": config.model_dump(mode="json"),
        "versions": report.library_versions(),
    }
    results["comparison"] = report.comparison_summary(results)
    write_json(run_dir.results, results)
    report.write_tables(results, run_dir.root)
    report.plot_accuracy(results, run_dir.root / report.PLOT_FILE)
    return results


def _aggregate(config: RunConfig, probs: dict[str, np.ndarray], labels: dict[str, np.ndarray], run_dir: RunDir, cpus: float) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for method in config.aggregation.methods:
        if method == "average":
            out["average"] = {"test_accuracy": accuracy(average_predict(probs["test"]), labels["test"]), "parameters": 0}
        elif method == "vote":
            out["vote"] = {"test_accuracy": accuracy(vote_predict(probs["test"]), labels["test"]), "parameters": 0}
        elif method == "dnn":
            spec = dnn_spec(config, num_subdomains=probs["test"].shape[1], num_classes=probs["test"].shape[2])
            t0 = time.perf_counter()
            trained = run_coarse_step(probs, labels, spec, cpus=min(1.0, cpus))
            run_dir.save_dnn(trained["state_dict"], spec)
            out["dnn"] = {
                "test_accuracy": trained["test_accuracy"],
                "validation_accuracy": trained["validation_accuracy"],
                "best_epoch": trained["best_epoch"],
                "parameters": trained["parameters"],
                "train_wall_s": round(time.perf_counter() - t0, 3),
                "fit_seconds": round(trained["train_seconds"], 3),
            }
    return out
