"""Fractional GPUs: local CNNs packed on one GPU as Ray actors vs one process training them one after another.

The question for a GPU node: how many subdomain workers should share one device
(``resources.gpus_per_subdomain`` = 1, 0.5, 0.25, 0.125)? Small local CNNs leave a GPU mostly
idle, so several actors on one device should train more samples per second than one process
that trains the same local models back to back. Printed: samples/s (training samples x epochs
over wall time; the actors' start-up is included, as a run pays it) for 1, 2, 4 and 8 actors
sharing GPU 0, against the sequential baseline, and the speed-up. A node with fewer CPU cores than
actors runs at most one busy worker per core (ddray's pool rule), which the line shows.

Needs a CUDA device; on a machine without one it exits with a message (status 0) so it can sit
in scripts. Ray's logical GPUs on a CPU machine would only measure the CPU.

    python benchmarks/bench_gpu.py                      # 8 subdomains, 64x64 digits, small_cnn
    python benchmarks/bench_gpu.py --model resnet --epochs 3
"""

from __future__ import annotations

import argparse
import sys
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--subdomains", type=int, default=8, help="local models to train (a 2 x N/2 grid)")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--model", default="small_cnn")
    parser.add_argument("--width", type=float, default=0.5)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--actors", type=int, nargs="+", default=[1, 2, 4, 8])
    args = parser.parse_args()

    import torch

    if not torch.cuda.is_available():
        from ddray.training.local import cuda_diagnosis

        print(f"bench_gpu: skipped, no CUDA device here ({cuda_diagnosis()}); run it on a GPU node")
        return

    import ray

    from ddray.config import parse_config
    from ddray.data import load_dataset
    from ddray.decomposition import decompose
    from ddray.orchestration.local_phase import LocalTask, run_local_phase
    from ddray.training.local import train_subdomain
    from ddray.training.spec import training_spec

    grid = [2, max(1, args.subdomains // 2)]
    config = parse_config(
        {
            "dataset": {"source": "digits", "image_size": [args.size, args.size]},
            "decomposition": {"grid": grid},
            "local_model": {"name": args.model, "width": args.width},
            "training": {"epochs": args.epochs, "batch_size": args.batch_size},
            "resources": {"cpus_per_subdomain": 1, "gpus_per_subdomain": 1},
        }
    )
    dataset = load_dataset(config.dataset, seed=0, grid=grid)
    subs = decompose(dataset.spatial_shape, grid, 0)
    spec = training_spec(config, num_classes=dataset.num_classes, in_channels=dataset.in_channels)
    arrays = dataset.arrays()
    samples = len(dataset.y_train) * args.epochs * len(subs)

    # one process, the local models one after another on GPU 0
    torch.cuda.synchronize()
    started = time.perf_counter()
    for sub in subs:
        train_subdomain(sub, arrays, spec)
    torch.cuda.synchronize()
    sequential = samples / (time.perf_counter() - started)
    print(f"{len(subs)} local {args.model} (width {args.width}), {args.epochs} epochs, {len(dataset.y_train)} samples, "
          f"{args.size}x{args.size}; {torch.cuda.get_device_name(0)}")
    print(f"sequential, one process : {sequential:10.0f} samples/s")

    ray.init(num_gpus=1, include_dashboard=False, logging_level="WARNING")
    try:
        ref = ray.put(arrays)
        for actors in args.actors:
            share = 1.0 / actors
            spec_share = training_spec(config.model_copy(update={"resources": config.resources.model_copy(update={"gpus_per_subdomain": share})}),
                                       num_classes=dataset.num_classes, in_channels=dataset.in_channels)
            tasks = [LocalTask(s, spec_share, f"/tmp/ddray-bench-gpu-{actors}-{s.index}.ckpt") for s in subs]
            cpus = min(1.0, ray.cluster_resources().get("CPU", 1) / actors)
            started = time.perf_counter()
            results = run_local_phase(tasks, ref, cpus=cpus, gpus=share, slots=actors, max_retries=0,
                                      on_event=lambda e: None, on_result=lambda r, w: None).results
            wall = time.perf_counter() - started  # worker start-up included: what a run pays
            devices = sorted({r.device for r in results})
            rate = samples / wall
            print(f"{actors} actor(s) x {share:.3f} GPU : {rate:10.0f} samples/s  ({rate / sequential:.2f} x sequential; "
                  f"on {', '.join(devices)}; start-up included)")
    finally:
        ray.shutdown()


if __name__ == "__main__":
    sys.exit(main())
