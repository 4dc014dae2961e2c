"""Many subdomains on one machine: scheduling overhead and memory.

Simulates an 8x8 = 64-subdomain job with fractional CPU shares
(``cpus_per_subdomain`` 0.25: eight workers on two cores) and reports

1. driver-side scheduling overhead per subdomain: the local phase's wall time
   divided by the number of subdomains, on a job whose training is almost
   free (one epoch on 64 images), so what remains is Ray scheduling, the
   actor pool, progress events and result handling (upper bound); once as a
   run does it (the workers' start inside the clock), once with the workers
   up before the clock starts;
2. memory: the data set's bytes, the object store's usage, and how much each
   worker's private memory grows from its start (torch imported, warmed up) to
   its reading after each subdomain, in the same process, median over all
   readings (one process against another, or one worker's largest reading,
   mixed up to 50 MiB of allocator noise into the figure).
   Part of that growth is the training's own (model, optimizer, the evaluation
   batches of 512 samples, whose activations scale with the subimage); so each
   mode runs twice, on 1000 images and on all 1797, with the same batches: the
   difference is what the 797 extra images cost a worker, to be held against
   their bytes in the whole data set and in one subdomain's share. Once with
   every worker given the whole data set (one object-store reference, mapped
   read-only), once with each worker given only its own subdomain's pixels
   (what the driver does).

    python benchmarks/bench_scale.py [--grid 8 8] [--cpus 0.25] [--image 64]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

BASE_IMAGES = 1000  # the evaluation batches (512) are full: the training's own memory is the same as on all images


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--grid", type=int, nargs=2, default=[8, 8])
    parser.add_argument("--cpus", type=float, default=0.25, help="cpus_per_subdomain")
    parser.add_argument("--image", type=int, default=64, help="digits resized to this edge (data size)")
    parser.add_argument("--num-cpus", type=int, default=2)
    args = parser.parse_args()

    import ray
    from ray._private.internal_api import memory_summary

    from ddray.config import parse_config
    from ddray.data import load_dataset
    from ddray.decomposition import decompose
    from ddray.orchestration.cluster import check_feasible
    from ddray.orchestration.local_phase import LocalTask, run_local_phase, start_pool
    from ddray.training.local import subdomain_arrays
    from ddray.training.spec import training_spec

    ray.init(address="local", num_cpus=args.num_cpus, include_dashboard=False, logging_level="WARNING")

    def job(limit: int | None, image: int, per_subdomain: bool = True, prestart: bool = False):
        config = parse_config(
            {
                "dataset": {"source": "digits", "image_size": [image, image], **({"limit": limit} if limit else {})},
                "decomposition": {"grid": args.grid, "overlap": 0},
                "local_model": {"name": "small_cnn", "width": 0.25},
                "training": {"epochs": 1, "batch_size": 64},
                "resources": {"cpus_per_subdomain": args.cpus},
            }
        )
        ds = load_dataset(config.dataset, seed=0, grid=args.grid, overlap=0)
        subs = decompose(ds.spatial_shape, args.grid, 0)
        settings = training_spec(config, num_classes=ds.num_classes, in_channels=ds.in_channels)
        arrays = ds.arrays()
        slots = check_feasible(args.cpus, 0)
        started: dict[int, dict] = {}  # pid -> the worker's reading once it is up, before any data
        after: dict[int, list[dict]] = {}  # pid -> its readings after each of its subdomains
        with tempfile.TemporaryDirectory() as tmp:
            tasks = [LocalTask(s, settings, str(Path(tmp) / f"{s.index}.ckpt")) for s in subs]
            pool = start_pool(len(tasks), slots, args.cpus, 0) if prestart else None
            if pool is not None:  # the workers are up before the clock starts, as on the warm service
                ray.get(list(pool.starting))
            t0 = time.perf_counter()
            # as the driver does: each subdomain's own pixels (or, to compare, one reference to everything)
            ref = {t.sub.index: ray.put(subdomain_arrays(arrays, t.sub)) for t in tasks} if per_subdomain else ray.put(arrays)
            results = run_local_phase(
                tasks, ref, cpus=args.cpus, gpus=0, slots=slots, max_retries=0, on_event=lambda e: None,
                on_result=lambda r, w: after.setdefault(w["pid"], []).append(w),
                on_worker=lambda w: started.setdefault(w["pid"], w), pool=pool,
            ).results
            wall = time.perf_counter() - t0
            store = next((line.strip() for line in memory_summary(address=ray.get_runtime_context().gcs_address, stats_only=True).splitlines() if "Plasma memory usage" in line), "n/a")
            del ref
        growth = {key: statistics.median(w[key] - started[pid][key] for pid in after if pid in started for w in after[pid])
                  for key in ("private_mb", "peak_rss_mb")}
        train = sum(r.train_seconds for r in results)
        return len(subs), wall, train, sum(a.nbytes for a in arrays.values()), store, len(after), growth

    n, wall, train, _, _, processes, _ = job(limit=64, image=args.image)
    print(f"{n} subdomains (grid {args.grid}), {args.cpus} CPU each; {processes} worker processes on {args.num_cpus} cores")
    print(f"overhead job (1 epoch, 64 images): local phase {wall:.1f} s, in-worker training {train:.1f} s")
    print(f"scheduling overhead per subdomain (upper bound, wall / subdomains): {wall / n:.3f} s   (target < 0.1 s)")
    n, wall, train, *_ = job(limit=64, image=args.image, prestart=True)
    print(f"the same with the workers up before the clock (their start, seconds, is no per-subdomain cost): local phase "
          f"{wall:.1f} s, in-worker training {train:.1f} s, {wall / n:.3f} s per subdomain")

    for per_subdomain in (False, True):
        *_, part_bytes, _, _, part = job(limit=BASE_IMAGES, image=args.image, per_subdomain=per_subdomain)
        n, _, _, data_bytes, store, processes, full = job(limit=None, image=args.image, per_subdomain=per_subdomain)
        extra = (data_bytes - part_bytes) / 2**20  # what the images beyond the first BASE_IMAGES weigh
        growth = full["private_mb"] - part["private_mb"]
        print(f"\n{'each worker gets its own subdomain (ddray)' if per_subdomain else 'every worker gets the whole data set (one reference)'}:")
        print(f"  data set: {data_bytes / 2**20:.1f} MiB (a subdomain's share {data_bytes / 2**20 / n:.2f} MiB); object store: {store}")
        print(f"  a worker's private growth from its start (median of the readings after each subdomain, {processes} workers): {part['private_mb']:.1f} MiB on "
              f"{BASE_IMAGES} images, {full['private_mb']:.1f} MiB on all (peak RSS {full['peak_rss_mb']:.1f} MiB, which counts "
              f"the object-store pages it maps)")
        print(f"  the extra images cost each worker {growth:+.1f} MiB; they weigh {extra:.1f} MiB in the data set, "
              f"{extra / n:.2f} MiB in a subdomain's share (target: about the share)")
    ray.shutdown()


if __name__ == "__main__":
    main()
