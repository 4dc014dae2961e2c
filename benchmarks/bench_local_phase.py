"""Local-phase efficiency: ddray's Ray actors vs the same trainings run serially.

Runs the same N local trainings twice in one invocation (so both sides see
the same machine load):

1. serially, in plain PyTorch in this process (``train_subdomain`` in a loop);
2. through ddray's local phase on an embedded Ray (one actor per slot).

Prints the ratio  ddray_local_wall / (serial_wall / min(cores, N)); 1.0 is
perfect parallel efficiency, the target is <= 1.15 for a job with at least
a minute of compute. Also prints the data set size, the object-store bytes
and each worker's peak RSS, to show the data set is held once.

    python benchmarks/bench_local_phase.py [--epochs 8] [--width 1.0] [--grid 2 2]
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time
from pathlib import Path

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--grid", type=int, nargs="+", default=[2, 2])
    parser.add_argument("--samples", type=int, default=None, help="limit the digits data set")
    parser.add_argument("--cores", type=int, default=os.cpu_count())
    args = parser.parse_args()

    import ray

    from ddray.config import parse_config
    from ddray.data import load_dataset
    from ddray.decomposition import decompose
    from ddray.orchestration.local_phase import LocalTask, run_local_phase
    from ddray.training.local import train_subdomain
    from ddray.training.spec import training_spec

    config = parse_config(
        {
            "dataset": {"source": "digits", **({"limit": args.samples} if args.samples else {})},
            "decomposition": {"grid": args.grid, "overlap": 2},
            "local_model": {"name": "small_cnn", "width": args.width},
            "training": {"epochs": args.epochs, "batch_size": 64},
        }
    )
    dataset = load_dataset(config.dataset, seed=0, grid=config.decomposition.grid, overlap=2)
    subs = decompose(dataset.spatial_shape, config.decomposition.grid, 2)
    settings = training_spec(config, num_classes=dataset.num_classes, in_channels=dataset.in_channels)
    arrays = dataset.arrays()
    data_bytes = sum(a.nbytes for a in arrays.values())
    workers = min(args.cores, len(subs))

    # 1. serial, plain PyTorch, one thread per training (what one Ray slot gets)
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    for sub in subs:
        train_subdomain(sub, arrays, settings)
    serial = time.perf_counter() - t0
    serial_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    # 2. ddray's local phase on an embedded Ray (start-up of Ray itself not counted; actor start-up is)
    ray.init(address="local", num_cpus=args.cores, include_dashboard=False, logging_level="WARNING")
    wheres: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        tasks = [LocalTask(s, settings, str(Path(tmp) / f"{s.index}.ckpt")) for s in subs]
        t0 = time.perf_counter()
        data_ref = ray.put(arrays)
        run_local_phase(tasks, data_ref, cpus=1, gpus=0, slots=args.cores, max_retries=0, on_event=lambda e: None, on_result=lambda r, w: wheres.append(w))
        parallel = time.perf_counter() - t0
    from ray._private.internal_api import memory_summary

    store_line = next((line.strip() for line in memory_summary(address=ray.get_runtime_context().gcs_address, stats_only=True).splitlines() if "Plasma memory usage" in line), "n/a")
    ray.shutdown()

    ideal = serial / workers
    print(f"subdomains {len(subs)}, workers {workers}, epochs {args.epochs}, width {args.width}")
    print(f"serial plain PyTorch : {serial:8.1f} s  (ideal parallel {ideal:.1f} s)")
    print(f"ddray local phase    : {parallel:8.1f} s")
    print(f"ratio ddray / ideal  : {parallel / ideal:8.3f}   (target <= 1.15)")
    print(f"data set             : {data_bytes / 2**20:8.1f} MiB (put into the object store once)")
    print(f"object store         : {store_line}")
    rss = [w.get("peak_rss_mb", float('nan')) for w in wheres]
    unique = {w["pid"]: w.get("peak_rss_mb") for w in wheres}
    print(f"worker peak RSS (MiB): {sorted(unique.values())}  (serial process: {serial_rss:.0f} MiB)")
    print(f"subdomain trainings  : {len(rss)} on {len(unique)} worker processes")


if __name__ == "__main__":
    main()
