"""Ray Tune's overhead per trial: ddray's per-subdomain search vs the same trainings run back to back.

Runs the same N x S local trainings twice in one invocation (same machine load):

1. serially in this process, plain PyTorch, one thread: exactly the
   configurations the search will try (the same searcher with the same
   seed), each trained with ``train_subdomain``;
2. ddray's ``run_search`` on an embedded Ray with ``--cores`` CPUs (Ray's own
   start-up is not counted; Tune's, the trial actors' and ``import torch`` in
   them are), one CPU per trial.

Reported overhead per trial, in slot-seconds::

    (tune_wall * concurrency - serial_wall) / trials,   concurrency = min(cores, trials)

i.e. the time a trial slot spends on anything but training (process start,
imports, scheduling, per-epoch reports and checkpoints, experiment
snapshots, fetching the data), split into the part outside the trials and
the part inside them. Target: under 2 s per trial on a 2-core machine. The
serial side runs alone on one core, so on a machine busy with other work the
parallel side also pays for sharing the cores: ``--cores 1`` runs the search
one trial at a time and isolates Tune's own cost. Also printed: the
wall-clock view ``tune_wall - serial_wall / concurrency`` per trial.

Measured on the 2-core machine shared with other test runs (load average
3-4.5), 4 subdomains, 3 epochs of ~0.35 s: 16 trials 0.64 s per trial when
the other load was light, 1.4-2.9 s during bursts of it (then almost all of
it "inside the trials": the two trainings slowed down by foreign processes,
reporting itself is 0.03-0.06 s per trial); 32 trials (``-S 8``) 0.54 and
1.44 s; 16 trials with ``--cores 1`` 0.52-0.57 s. Start-up is paid once per
trial slot (actor reuse), so it shrinks per trial as trials are added.

    python benchmarks/bench_tune_overhead.py [--samples-per-subdomain 4] [--epochs 3] [--grid 2 2]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples-per-subdomain", "-S", type=int, default=4, help="Tune samples per subdomain")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--grid", type=int, nargs="+", default=[2, 2])
    parser.add_argument("--images", type=int, default=2000, help="synthetic images in the data set")
    parser.add_argument("--size", type=int, default=32, help="image edge in pixels")
    parser.add_argument("--width", type=float, default=0.5)
    parser.add_argument("--cores", type=int, default=min(2, os.cpu_count() or 1))
    args = parser.parse_args()

    import ray
    import torch

    from ddray.config import parse_config
    from ddray.data import load_dataset
    from ddray.decomposition import decompose
    from ddray.orchestration.local_phase import LocalTask
    from ddray.orchestration.tune import run_search
    from ddray.orchestration.tune.searcher import SubdomainSearcher
    from ddray.orchestration.tune.space import coerce_overrides, search_space
    from ddray.run_dir import RunDir
    from ddray.training.local import train_subdomain
    from ddray.training.spec import training_spec

    config = parse_config(
        {
            "dataset": {"source": "synthetic", "kind": "count", "samples": args.images, "size": [args.size] * len(args.grid)},
            "decomposition": {"grid": args.grid},
            "local_model": {"name": "small_cnn", "width": args.width},
            "training": {"epochs": args.epochs, "batch_size": 64},
            "aggregation": {"methods": ["average"]},
            "tune": {
                "num_samples": args.samples_per_subdomain,
                "search_alg": "random",
                "space": {"lr": {"loguniform": [0.0003, 0.01]}, "batch_size": {"choice": [32, 64]}},
            },
        }
    )
    dataset = load_dataset(config.dataset, seed=config.seed, grid=config.decomposition.grid, overlap=0)
    subs = decompose(dataset.spatial_shape, config.decomposition.grid, 0)
    arrays = dataset.arrays()
    base = training_spec(config, num_classes=dataset.num_classes, in_channels=dataset.in_channels)
    trials = len(subs) * args.samples_per_subdomain

    # 1. serial: the same configurations the search will draw, back to back in this process
    searcher = SubdomainSearcher(
        [s.index for s in subs], search_space(config.tune), num_samples=args.samples_per_subdomain,
        algorithm="random", metric="selected_val_accuracy", mode="max", seed=config.seed,
    )
    torch.set_num_threads(1)
    suggestions = [searcher.suggest(f"t{i}") for i in range(trials)]
    t0 = time.perf_counter()
    for cfg in suggestions:
        train_subdomain(subs[cfg["subdomain"]], arrays, base.with_overrides(coerce_overrides(cfg)))
    serial = time.perf_counter() - t0

    # 2. the Tune search (ray.init not counted; everything after it is)
    ray.init(address="local", num_cpus=args.cores, include_dashboard=False, logging_level="WARNING")
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = RunDir(Path(tmp) / "run")
        run_dir.create()
        tasks = [LocalTask(s, base, run_dir.state_file(s.index)) for s in subs]
        t0, cpu0 = time.perf_counter(), time.process_time()
        data_ref = ray.put(arrays)
        summary = run_search(config, run_dir, tasks, data_ref, slots=args.cores, on_event=lambda e: None, on_result=lambda r, w: None)
        tune_wall = time.perf_counter() - t0
        driver_cpu = time.process_time() - cpu0
        import pandas as pd

        frame = pd.read_csv(run_dir.root / "tune" / "trials.csv")
    ray.shutdown()

    concurrency = min(args.cores, trials)
    overhead = (tune_wall * concurrency - serial) / trials
    print(f"subdomains {len(subs)} x samples {args.samples_per_subdomain} = {trials} trials, {args.epochs} epochs, "
          f"{args.images} images of {args.size}px, width {args.width}, {args.cores} cores")
    print(f"serial plain PyTorch     : {serial:8.1f} s  ({serial / trials:.2f} s per training)")
    print(f"Tune search              : {tune_wall:8.1f} s  (concurrency {concurrency}; ideal {serial / concurrency:.1f} s)")
    print(f"Tune overhead per trial  : {overhead:8.2f} s  slot-seconds  (target < 2 s)")
    inside = frame.time_total_s.sum()
    print(f"  outside the trials     : {(tune_wall * concurrency - inside) / trials:8.2f} s per trial "
          f"(Tune and actor start-up, import torch, scheduling, idle slots at the end)")
    print(f"  inside the trials      : {(inside - serial) / trials:8.2f} s per trial "
          f"(reports, checkpoints, data; and {concurrency} trainings sharing the cores: compare --cores 1)")
    print(f"    of which reporting   : {frame.report_seconds.sum() / trials:8.2f} s per trial (per-epoch results + checkpoints)")
    print(f"driver CPU during search : {driver_cpu:8.1f} s  (Tune's controller loop competes with the trials for the cores)")
    print(f"machine load average     : {os.getloadavg()[0]:8.2f}  (other processes slow the parallel side only)")
    print(f"trial processes          : {frame.pid.nunique()} for {len(frame)} trials (actor reuse)")
    print(f"wall-clock view per trial: {(tune_wall - serial / concurrency) / trials:8.2f} s")
    print(f"trial statuses           : {summary['trials']}")


if __name__ == "__main__":
    main()
