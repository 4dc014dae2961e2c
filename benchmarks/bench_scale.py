"""Many subdomains on one machine: scheduling overhead and memory.

Simulates an 8x8 = 64-subdomain job with fractional CPU shares
(``cpus_per_subdomain`` 0.25: eight workers on two cores) and reports

1. driver-side scheduling overhead per subdomain: the local phase's wall time
   divided by the number of subdomains, on a job whose training is almost
   free (one epoch on 64 images), so what remains is Ray scheduling, the
   actor pool, progress events and result handling (upper bound);
2. memory: the data set's bytes, the object store's usage, and how much each
   worker's private memory grows from its start (torch imported, warmed up) to
   its largest reading after a subdomain, in the same process (comparing
   different processes mixed allocator noise of +-10 MiB into the figure). The
   data's part of it is the full data set's growth minus a 64-image job's, and
   must be about a subdomain's share (1/64 of the data), not the data set:
   once with every worker given the whole data set (one object-store
   reference, mapped read-only), once with each worker given only its own
   subdomain's pixels (what the driver does).

    python benchmarks/bench_scale.py [--grid 8 8] [--cpus 0.25] [--image 64]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path


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
    from ddray.orchestration.local_phase import LocalTask, run_local_phase
    from ddray.training.local import subdomain_arrays
    from ddray.training.spec import training_spec

    ray.init(address="local", num_cpus=args.num_cpus, include_dashboard=False, logging_level="WARNING")

    def job(limit: int | None, image: int, per_subdomain: bool = True):
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
            t0 = time.perf_counter()
            # as the driver does: each subdomain's own pixels (or, to compare, one reference to everything)
            ref = {t.sub.index: ray.put(subdomain_arrays(arrays, t.sub)) for t in tasks} if per_subdomain else ray.put(arrays)
            results = run_local_phase(
                tasks, ref, cpus=args.cpus, gpus=0, slots=slots, max_retries=0, on_event=lambda e: None,
                on_result=lambda r, w: after.setdefault(w["pid"], []).append(w),
                on_worker=lambda w: started.setdefault(w["pid"], w),
            ).results
            wall = time.perf_counter() - t0
            store = next((line.strip() for line in memory_summary(address=ray.get_runtime_context().gcs_address, stats_only=True).splitlines() if "Plasma memory usage" in line), "n/a")
            del ref
        growth = {key: statistics.median(max(w[key] for w in after[pid]) - started[pid][key] for pid in after if pid in started)
                  for key in ("private_mb", "peak_rss_mb")}
        train = sum(r.train_seconds for r in results)
        return len(subs), wall, train, sum(a.nbytes for a in arrays.values()), store, len(after), growth

    n, wall, train, _, _, processes, small = job(limit=64, image=args.image)
    print(f"{n} subdomains (grid {args.grid}), {args.cpus} CPU each; {processes} worker processes on {args.num_cpus} cores")
    print(f"overhead job (1 epoch, 64 images): local phase {wall:.1f} s, in-worker training {train:.1f} s")
    print(f"scheduling overhead per subdomain (upper bound, wall / subdomains): {wall / n:.3f} s   (target < 0.1 s)")
    print(f"a worker's growth from its start, 64-image job (training's own memory, median over workers): "
          f"private {small['private_mb']:.1f} MiB, peak RSS {small['peak_rss_mb']:.1f} MiB")

    for per_subdomain in (False, True):
        n, wall, train, data_bytes, store, processes, full = job(limit=None, image=args.image, per_subdomain=per_subdomain)
        share = data_bytes / 2**20 / n
        data_growth = full["private_mb"] - small["private_mb"]
        print(f"\n{'each worker gets its own subdomain (ddray)' if per_subdomain else 'every worker gets the whole data set (one reference)'}:")
        print(f"  data set: {data_bytes / 2**20:.1f} MiB (a subdomain's share {share:.2f} MiB); object store: {store}")
        print(f"  a worker's growth from its start (median over {processes} workers): private {full['private_mb']:.1f} MiB, "
              f"peak RSS {full['peak_rss_mb']:.1f} MiB (RSS counts the object-store pages it maps)")
        print(f"  the data's part (private growth minus the 64-image job's): {data_growth:.1f} MiB = "
              f"{data_growth / (data_bytes / 2**20):.2f} x the data set, {data_growth / share:.1f} x a subdomain's share "
              f"(target: the share + a small constant)")
    ray.shutdown()


if __name__ == "__main__":
    main()
