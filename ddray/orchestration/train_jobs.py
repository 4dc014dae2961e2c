"""The comparison models as a Ray Train job: global CNN, coherent CNN-DNN, transfer learning.

Design:
- One ``TorchTrainer`` job trains every model named in ``compare`` that is
  not finished yet, one after the other, on the same worker group. Ray
  Train's start-up (measured 19 s with 1 worker, 25 s with 2 on the 2-core
  machine) is paid once instead of once per model. Each model's
  ``train_wall_s`` is timed inside the training loop, so no model is charged
  for start-up; the job's start-up is reported as ``startup_s`` and
  ``job_wall_s = startup_s + train_wall_s`` is what the model costs as a job
  of its own.
- ``resources.num_workers`` workers, each with ``cpus_per_subdomain`` CPUs
  (and one GPU when ``gpus_per_subdomain > 0``). With more than one worker
  ``ray.train.torch.prepare_model`` wraps the model in DDP (gloo on CPU,
  NCCL on GPU: Ray Train's default backend choice); the data sharding is in
  :mod:`ddray.training.baselines`.
- Data: the driver's object-store reference travels inside
  ``train_loop_config`` and each worker ``ray.get``s it (zero-copy on its
  node). The transfer start (trained local CNNs, and the DNN for
  ``baselines.transfer_init: locals_and_dnn``) is read on the
  driver from ``RUN/checkpoints`` and shipped once the same way, so workers
  need no access to the run folder.
- Rank 0 reports each finished model with a checkpoint (weights + summary).
  The driver copies the weights to ``RUN/checkpoints/baselines/<name>.pt`` and
  the summary to ``RUN/baselines/<name>.json``; that file marks the model
  finished, so ``--resume`` does not train it again.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import ray

from ddray.config import RunConfig
from ddray.data import Dataset
from ddray.decomposition import Subdomain
from ddray.errors import BaselineFailed, ResourceError
from ddray.orchestration.cluster import ClusterShape, cluster_shape, feasible_capacity
from ddray.run_dir import RunDir, read_model, write_model
from ddray.storage import write_json
from ddray.training.baselines import BaselineJob, TransferStart
from ddray.training.spec import BASELINE_NAMES, TrainingSpec, dnn_spec, training_spec


def worker_resources(config: RunConfig) -> tuple[float, float]:
    """(CPUs, GPUs) of one Ray Train worker."""
    res = config.resources
    return res.cpus_per_subdomain, (1.0 if res.gpus_per_subdomain > 0 else 0.0)


def check_baselines_feasible(config: RunConfig, shape: ClusterShape | None = None) -> None:
    """Raise ResourceError unless the cluster can reach ``num_workers`` Train workers at once.

    Reachable: the nodes that are up plus what the autoscaler may still start
    (``shape``, default: asked from the running cluster). On a cold cluster the
    Train job's pending placement group makes the autoscaler start the nodes.
    """
    cpus, gpus = worker_resources(config)
    workers = config.resources.num_workers
    try:
        feasible_capacity(
            cluster_shape() if shape is None else shape, cpus, gpus,
            what="Ray Train worker(s)", workers=workers, request=f"CPU {cpus:g}, GPU {gpus:g} each",
        )
    except ResourceError as err:
        raise ResourceError(
            f"compare: {config.compare} needs {workers} Ray Train worker(s) at once, each with "
            f"resources.cpus_per_subdomain CPUs and one whole GPU when gpus_per_subdomain > 0. {err}"
        ) from None


def baseline_job(config: RunConfig, dataset: Dataset, subdomains: Sequence[Subdomain], name: str) -> BaselineJob:
    shape = dict(num_classes=dataset.num_classes, in_channels=dataset.in_channels)
    return BaselineJob(
        name,
        training_spec(config, **shape, baseline=name),
        dnn_spec(config, num_subdomains=len(subdomains), num_classes=dataset.num_classes),
        config.baselines.transfer_init,
    )


def local_specs(config: RunConfig, dataset: Dataset, run_dir: RunDir, subdomains: Sequence[Subdomain]) -> list[TrainingSpec]:
    """Each subdomain's local CNN as trained (a Tune search may have changed its width), else as configured."""
    default = training_spec(config, num_classes=dataset.num_classes, in_channels=dataset.in_channels)
    return [run_dir.load_local_model(s.index)[1] if run_dir.local_model(s.index).exists() else default for s in subdomains]


def transfer_start(run_dir: RunDir, subdomains: Sequence[Subdomain], init: str = "locals") -> TransferStart:
    """The trained local CNNs (and for ``init == "locals_and_dnn"`` the trained DNN) as initial values."""
    specs, states = [], []
    for sub in subdomains:
        if not run_dir.local_model(sub.index).exists():
            raise BaselineFailed(f"the transfer baseline needs the trained local model {run_dir.local_model(sub.index)}, which is missing")
        state, spec = run_dir.load_local_model(sub.index)
        specs.append(spec)
        states.append(state)
    dnn_state = None
    if init == "locals_and_dnn":
        if not run_dir.dnn.exists():
            raise BaselineFailed(f"baselines.transfer_init: locals_and_dnn needs the trained DNN {run_dir.dnn}, which is missing")
        dnn_state = run_dir.load_dnn()[0]
    return TransferStart(specs, states, dnn_state)


def baseline_loop(cfg: dict) -> None:
    """Runs on every Ray Train worker: build, wrap (DDP if >1 worker), train, report each model in turn."""
    import ray.train
    import ray.train.torch
    import torch

    from ddray.training.baselines import build_model, train_baseline

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.set_num_threads(max(1, int(cfg["cpus"])))
    arrays = ray.get(cfg["data"])
    start = ray.get(cfg["start"]) if cfg["start"] is not None else None
    device = ray.train.torch.get_device()
    for job in cfg["jobs"]:
        inner = build_model(job, cfg["subdomains"], cfg["local_specs"], start)
        model = ray.train.torch.prepare_model(inner)  # DistributedDataParallel when world > 1
        outcome = train_baseline(model, arrays, job, rank=rank, world_size=world, device=device, unwrapped=inner)
        if rank == 0:
            print(f"[ddray] baseline {job.name}: test accuracy {outcome.test_accuracy:.4f}, "
                  f"{outcome.train_wall_s:.1f} s on {world} worker(s)", flush=True)
        with tempfile.TemporaryDirectory() as d:
            checkpoint = None
            if rank == 0:
                write_model(Path(d) / f"{job.name}.pt", inner.state_dict(), job=job.to_dict())
                write_json(Path(d) / f"{job.name}.json", outcome.summary())
                checkpoint = ray.train.Checkpoint.from_directory(d)
            ray.train.report(
                {"baseline": job.name, "test_accuracy": outcome.test_accuracy, "train_wall_s": outcome.train_wall_s},
                checkpoint=checkpoint,
            )


def run_baselines(
    config: RunConfig,
    run_dir: RunDir,
    dataset: Dataset,
    subdomains: list[Subdomain],
    *,
    data_ref: ray.ObjectRef | None = None,
) -> dict[str, dict[str, Any]]:
    """Train every model of ``config.compare`` not finished yet; return results['baselines']."""
    from ray import train
    from ray.train.torch import TorchTrainer

    names = [n for n in dict.fromkeys(config.compare) if n in BASELINE_NAMES]
    done = {n: json.loads(run_dir.baseline_summary(n).read_text()) for n in names if run_dir.baseline_summary(n).exists()}
    todo = [n for n in names if n not in done]
    if todo:
        check_baselines_feasible(config)
        if data_ref is None:
            data_ref = ray.put(dataset.arrays())
        start_ref = None
        if "transfer" in todo:
            start_ref = ray.put(transfer_start(run_dir, subdomains, config.baselines.transfer_init))
        cpus, gpus = worker_resources(config)
        workers = config.resources.num_workers
        resources = {"CPU": cpus, **({"GPU": gpus} if gpus else {})}
        storage = run_dir.location("baselines")
        name = f"job-{time.strftime('%Y%m%d-%H%M%S')}"
        jobs = {n: baseline_job(config, dataset, subdomains, n) for n in todo}
        trainer = TorchTrainer(
            baseline_loop,
            train_loop_config={
                "data": data_ref,
                "start": start_ref,
                "subdomains": list(subdomains),
                "local_specs": local_specs(config, dataset, run_dir, subdomains),
                "jobs": list(jobs.values()),
                "cpus": cpus,
            },
            scaling_config=train.ScalingConfig(num_workers=workers, use_gpu=gpus > 0, resources_per_worker=resources),
            run_config=train.RunConfig(name=name, storage_path=storage, failure_config=train.FailureConfig(max_failures=0)),
        )
        started = time.perf_counter()
        try:
            result = trainer.fit()
        except Exception as err:
            raise BaselineFailed(f"the Ray Train job for {todo} failed: {_short(err)}") from None
        job_wall = time.perf_counter() - started
        trained = _collect(result, run_dir)
        missing = [n for n in todo if n not in trained]
        if missing:
            raise BaselineFailed(f"the Ray Train job for {todo} finished without reporting {missing}")
        startup = max(0.0, job_wall - sum(trained[n]["train_wall_s"] for n in todo))
        for n in todo:
            info = trained[n]
            info.update(
                startup_s=round(startup, 3),
                job_wall_s=round(startup + info["train_wall_s"], 3),
                job=name,
                job_wall_total_s=round(job_wall, 3),
                num_workers=workers,
                use_gpu=gpus > 0,
                start=jobs[n].start_label,
                checkpoint=str(run_dir.baseline_model(n)),
            )
            write_json(run_dir.baseline_summary(n), info)
            done[n] = info
    return {n: _public(done[n]) for n in names}


def _collect(result, run_dir: RunDir) -> dict[str, dict]:
    """Install each reported model's weights from its Ray Train checkpoint in the run folder; return the summaries."""
    trained: dict[str, dict] = {}
    checkpoints = [c for c, _ in (result.best_checkpoints or [])] or ([result.checkpoint] if result.checkpoint else [])
    for checkpoint in checkpoints:
        with checkpoint.as_directory() as d:
            for summary in sorted(Path(d).glob("*.json")):
                name = summary.stem
                saved = read_model(Path(d) / f"{name}.pt", what=f"{name} baseline")
                write_model(run_dir.baseline_model(name), saved.pop("state_dict"), **saved)
                trained[name] = json.loads(summary.read_text())
    return trained


def _public(info: dict) -> dict:
    """What results.json keeps (the per-epoch history stays in RUN/baselines/<name>.json)."""
    return {k: v for k, v in info.items() if k != "history"}


def _short(err: BaseException, limit: int = 600) -> str:
    text = " ".join(line.strip() for line in str(err).strip().splitlines()[-6:])
    return text[-limit:]
