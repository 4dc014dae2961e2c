"""The driver: one ddray job from config to results folder.

Order matters for the user: everything that can be checked without Ray
(config, data, decomposition, output folder) is checked first, so bad input
fails in seconds and never half-way through a training.
"""

from __future__ import annotations

import json
import tempfile
import threading
import time
from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import Any, Callable

import numpy as np
import ray
from rich.console import Console

from ddray import report
from ddray.aggregation import aggregate, stack_probabilities
from ddray.coarse.streaming import stream_entry
from ddray.config import RunConfig
from ddray.data import DataError, Dataset, load_dataset
from ddray.data.size import check_dataset_size
from ddray.data.validation import require_path
from ddray.decomposition import Subdomain, decompose
from ddray.errors import JobFailed
from ddray.limits import Limits
from ddray.orchestration.cluster import check_feasible
from ddray.orchestration.coarse_phase import after_local_phase, prepare_aggregation, start_coarse
from ddray.orchestration.session import ray_session
from ddray.orchestration.local_phase import LocalTask, PoolStart, discard_pool, run_local_phase, start_pool
from ddray.orchestration.actors import kill_actors
from ddray.orchestration.warm_pool import hand_back, take_workers
from ddray.progress import ProgressTracker
from ddray.run_dir import RunDir, RunDirError
from ddray.storage import is_uri, local_copy, storage_base, write_json
from ddray.tracking import Tracking
from ddray.training.baselines import parameter_summary
from ddray.training.local import LocalResult, subdomain_arrays
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


def check_data(config: RunConfig) -> None:
    """What can be told about the data in milliseconds (the path exists, the size from file headers),
    so a wrong path fails before Ray starts; ``load_data`` checks everything else."""
    cfg = config.dataset
    if cfg.path and is_uri(cfg.path):
        return  # fetched by load_data, which names the URI when it is missing
    if cfg.path:
        require_path(cfg.path, field=cfg.path_key)
    check_dataset_size(cfg, Limits().dataset_bytes)  # also: the files a torchvision source needs are all there


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
    keep_warm: bool = False,
) -> dict[str, Any]:
    """Run a whole ddray job and return the content of results.json.

    ``run_id`` names the run (default ``<output folder name>-<UTC time>-<6 hex>``); with a storage
    base (``config.storage`` or ``$DDRAY_STORAGE``) the run owns ``<base>/<run_id>/`` and its whole
    folder is copied there when it ends, however it ends. ``keep_warm`` (a sweep's run, a
    ``ddray.Session``'s: the next run follows in this process, orchestration/warm_runs.py): the
    subdomain workers are left started in the cluster's warm pool.
    """
    started = time.perf_counter()
    console = console or Console(stderr=True)
    run_dir = prepare_run_dir(config, output_dir, resume, run_id)
    check_data(config)  # the quick checks (paths, sizes from headers) before Ray starts
    # Ray, and for the local phase its workers, start while the data loads (seconds each, not in sequence)
    with ray_session(address, num_cpus=num_cpus, then=lambda: _start_workers(config, run_dir)) as ray_up:
        try:
            dataset = load_data(config)
            subdomains = decompose(dataset.spatial_shape, config.decomposition.grid, config.decomposition.overlap)
            if resume:
                run_dir.create()
            else:
                run_dir.claim(config)  # takes the storage prefix at once (run.json, config.yaml)
        except BaseException:
            _release_workers(ray_up)  # bad input: the workers started for nothing go at once
            raise
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
        tracking = Tracking(run_dir, config)  # TensorBoard (and MLflow) from each finished model; never fails the run
        try:
            pool = ray_up()
            try:
                results = _run_on_ray(config, run_dir, dataset, subdomains, tracker, started, pool, tracking, ray_up.release, keep_warm)
            except BaseException:
                discard_pool(pool)  # workers a failed run did not use (a joined cluster outlives this run)
                raise
            reports = report.write_in_background(results, run_dir.root, tracking)  # while Ray shuts down
        except KeyboardInterrupt:  # Ctrl-C, or SIGTERM from `ddray cancel` (the CLI turns it into this)
            tracker.close("cancelled", error="interrupted; finished subdomains are kept, continue with ddray run --resume")
            tracking.close("KILLED")
            _save_to_storage(run_dir, console, strict=False)
            raise
        except BaseException as err:
            tracker.close("failed", error=str(err) or type(err).__name__)
            tracking.close("FAILED")
            _save_to_storage(run_dir, console, strict=False)
            raise
    try:
        reports.result()
    except Exception as err:
        tracker.close("failed", error=f"writing the tables and plots failed: {err}")
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


def _release_workers(ray_up) -> None:
    try:
        pool = ray_up()
    except BaseException:  # noqa: BLE001 - Ray did not start: nothing to release, the first error is the one to show
        return
    discard_pool(pool)


def _start_workers(config: RunConfig, run_dir: RunDir) -> PoolStart | None:
    """Runs as soon as Ray is up, while the driver still loads the data: the local phase's workers.

    Only what the config alone tells (subdomain count, resources, what a resumed run has left);
    with a Tune search its trials start their own processes. Any problem here is checked again,
    and reported, by the driver once the data is loaded.
    """
    pool = None
    res = config.resources
    done = sum(run_dir.local_result(i).exists() for i in range(config.decomposition.num_subdomains))
    todo = config.decomposition.num_subdomains - done if config.tune is None else 0
    # a service's warm workers: this job takes those it can use and frees the others for its own processes
    warm = take_workers(res.cpus_per_subdomain, res.gpus_per_subdomain, todo)
    if todo > 0:
        slots = check_feasible(res.cpus_per_subdomain, res.gpus_per_subdomain)
        pool = start_pool(todo, slots, res.cpus_per_subdomain, res.gpus_per_subdomain, warm=warm)
    return pool


def _run_on_ray(
    config: RunConfig,
    run_dir: RunDir,
    dataset: Dataset,
    subdomains: list[Subdomain],
    tracker: ProgressTracker,
    started: float,
    pool: PoolStart | None = None,
    tracking: Tracking | None = None,
    release_ray: Callable[[], None] | None = None,
    keep_warm: bool = False,
) -> dict[str, Any]:
    """The local phase, the coarse level and the baselines. ``release_ray``: called once nothing after the
    aggregation needs Ray (no ``compare``), so an embedded Ray shuts down while the reports are written."""
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

    local_started = time.perf_counter()
    todo = [s for s in subdomains if s.index not in finished]
    warm = pool.warm if pool is not None else 0
    tracker.phase("local_training", subdomains=len(subdomains), to_train=len(todo), workers=min(slots, max(1, len(todo))), warm_workers=warm)

    # a resumed run adds the local-phase time of earlier sessions (up to their last finished
    # subdomain), so its speed-ups stay honest
    earlier = json.loads(run_dir.timings.read_text()).get("local_wall", 0.0) if run_dir.timings.exists() else 0.0

    def record_local_wall() -> float:
        wall = earlier + time.perf_counter() - local_started
        write_json(run_dir.timings, {"local_wall": wall})
        return wall

    def clock() -> float:  # seconds of local phase, earlier sessions included
        return earlier + time.perf_counter() - local_started

    labels = {"train": dataset.y_train, "val": dataset.y_val, "test": dataset.y_test}
    coarse_worker, multilevel, stream = start_coarse(config, run_dir, dataset, labels, tracker, clock, set(finished))

    def offer_finished() -> None:
        if coarse_worker is not None:
            coarse_worker.offer({i: probs for i, (probs, _) in finished.items()})

    offer_finished()  # restored subdomains count as done from the start

    def keep(result: LocalResult, where: dict) -> None:
        summary = {**result.summary(), "node_id": where.get("node_id"), "bounds": subdomains[result.subdomain].bounds,
                   "finished_s": round(clock(), 3)}
        if "trial_id" in where:  # chosen by the Tune search
            summary.update(trial_id=where["trial_id"], tune_config=where.get("tune_config"))
        if result.model_state is None:
            raise JobFailed(f"subdomain {result.subdomain} finished without its model weights")
        run_dir.save_local_model(result.subdomain, result.model_state, result.spec, result.subdomain_spec)
        run_dir.save_local_result(result.subdomain, result.probabilities, summary)  # last: marks it done
        finished[result.subdomain] = (result.probabilities, summary)
        record_local_wall()
        offer_finished()  # the coarse level's thread refits on it; this returns at once
        if tracking is not None:
            tracking.local(result.subdomain, result.history, result.test_accuracy)

    tasks = [LocalTask(sub, spec, run_dir.state_file(sub.index)) for sub in todo]
    extra: dict[str, Any] = {}
    preparing = False
    kept: list = []  # the local phase's workers it kept; the driver's torch work after it runs on the last (coarse_phase.after_local_phase)
    keep_warm = keep_warm and not config.compare  # the baselines need the CPUs idle workers hold

    def on_event(event: dict) -> None:
        nonlocal preparing
        tracker.update(event)
        if not preparing and event.get("status") == "running":  # the workers train: see prepare_aggregation
            preparing = True
            # a Tune search keeps no worker: the DNN then fits in this process
            threading.Thread(target=prepare_aggregation, args=(config.tune is not None,), name="ddray-warm-up", daemon=True).start()

    worker_nodes: dict[str, int] = {}  # node id -> local-phase workers that came up there

    def count_worker(where: dict) -> None:
        worker_nodes[where["node_id"]] = worker_nodes.get(where["node_id"], 0) + 1

    try:
        if config.tune is not None:
            from ddray.orchestration.tune import run_search

            data_ref = ray.put(dataset.arrays())  # once, shared by every trial
            tracker.phase("search", subdomains=len(subdomains), samples=config.tune.num_samples)
            extra["tune"] = run_search(config, run_dir, tasks, data_ref, slots=slots, on_event=on_event, on_result=keep)
        else:
            # each worker gets its own subdomain's pixels, cut here once: a worker then maps 1/N of the
            # data (plus overlap), not every page of the whole data set its slice runs through
            arrays = dataset.arrays()
            data_ref = None
            kept = run_local_phase(
                tasks,
                {t.sub.index: ray.put(subdomain_arrays(arrays, t.sub)) for t in tasks},
                cpus=res.cpus_per_subdomain,
                gpus=res.gpus_per_subdomain,
                slots=slots,
                max_retries=res.max_retries,
                on_event=on_event,
                on_result=keep,
                pool=pool,
                on_worker=count_worker,
                keep="all" if keep_warm else "last",
            ).workers
        local_wall = record_local_wall()
    finally:
        if coarse_worker is not None:
            coarse_worker.close()  # the fit under way ends; what is left is fitted below

    try:
        tracker.phase("aggregation", methods=config.aggregation.methods)
        agg_started = time.perf_counter()
        local_probs = {s.index: finished[s.index][0] for s in subdomains}
        probs = {split: stack_probabilities([local_probs[s.index][split] for s in subdomains]) for split in ("train", "val", "test")}
        coarse = dnn_spec(config, num_subdomains=len(subdomains), num_classes=dataset.num_classes) if "dnn" in config.aggregation.methods else None
        (aggregation, dnn), parameters = after_local_phase(
            kept[-1] if kept else None,
            partial(aggregate, config.aggregation.methods, probs, labels, coarse),
            partial(parameter_summary, config, num_classes=dataset.num_classes, in_channels=dataset.in_channels,
                    local_parameters=[int(finished[s.index][1].get("parameters") or 0) for s in subdomains]),
        )
    finally:
        if keep_warm:
            hand_back(kept, res.cpus_per_subdomain, res.gpus_per_subdomain)
        else:
            kill_actors(kept)
    if release_ray is not None and not config.compare:  # nothing below needs Ray
        release_ray()
    if config.aggregation.streaming:  # its last entry is the DNN itself
        stream.append(stream_entry(list(local_probs), clock(), aggregation["dnn"]))
        write_json(run_dir.stream, stream)
        tracker.global_accuracy(stream[-1])
        aggregation["stream"] = stream
    if multilevel is not None:  # regions finished during the local phase are kept; the rest is fitted now
        aggregation["multilevel"] = multilevel.finish(local_probs)
        run_dir.save_multilevel(multilevel.saved())
    if dnn is not None:
        run_dir.save_dnn(dnn.model.state_dict(), coarse)
        if tracking is not None:
            tracking.dnn(dnn.fit.history, dnn.test_probabilities.argmax(1), labels["test"], dataset.num_classes, dnn.test_accuracy)
    aggregation_wall = time.perf_counter() - agg_started

    timings = {"local_wall": round(local_wall, 3), "aggregation_wall": round(aggregation_wall, 3)}
    if config.compare:
        from ddray.orchestration.train_jobs import run_baselines  # issue 3: global / coherent / transfer

        tracker.phase("baselines", models=config.compare)
        baselines_started = time.perf_counter()
        extra["baselines"] = run_baselines(config, run_dir, dataset, subdomains, data_ref=data_ref)
        if tracking is not None:
            tracking.baselines({name: run_dir.baseline_summary(name) for name in extra["baselines"]})
        timings["baselines_wall"] = round(time.perf_counter() - baselines_started, 3)
    timings["total_wall"] = round(time.perf_counter() - started, 3)

    results: dict[str, Any] = {
        "local": [finished[s.index][1] for s in subdomains],
        "aggregation": aggregation,
        **extra,
        "timings_s": timings,
        # of the local phase's workers: how many a service had started before the job, and how many came up on each
        # node (a worker that came up after every subdomain was taken is counted too: it shows where the pool spread)
        "workers": {"warm": warm, "nodes": worker_nodes},
        # class_names are read by predict; the fingerprint (sha256 of every split's model inputs and
        # labels) tells whether two runs trained on the same data
        "dataset": {**dataset.summary(), "fingerprint": dataset.fingerprint()},
        "decomposition": {"grid": config.decomposition.grid, "overlap": config.decomposition.overlap, "subdomains": len(subdomains)},
        "config": config.model_dump(mode="json"),
        "versions": report.library_versions(),
    }
    results["parameters"] = parameters
    results["comparison"] = report.comparison_summary(results)
    write_json(run_dir.results, results)  # first: the tables and plots are drawn from what is safe
    return results
