"""Many subdomains on one machine: scheduling overhead and memory.

Simulates an 8x8 = 64-subdomain job with fractional CPU shares
(``cpus_per_subdomain`` 0.25: eight workers on two cores) and reports

1. driver-side scheduling overhead per subdomain: the local phase's wall time
   divided by the number of subdomains, on a job whose training is almost
   free (one epoch on 64 images), so what remains is Ray scheduling, the
   actor pool, progress events and result handling (upper bound);
2. memory: the data set's bytes, the object store's usage, and each worker's
   private memory and peak RSS above an idle worker's, which must grow with
   the subimage (1/64 of the data), not with the data set: once with every
   worker given the whole data set (ddray before #15), once with each worker
   given only its own subdomain's pixels (what the driver does now).

    python benchmarks/bench_scale.py [--grid 8 8] [--cpus 0.25] [--image 64]
"""

from __future__ import annotations

import argparse
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
    from ddray.orchestration.local_phase import LocalTask, SubdomainWorker, run_local_phase
    from ddray.training.local import subdomain_arrays
    from ddray.training.spec import training_spec

    ray.init(address="local", num_cpus=args.num_cpus, include_dashboard=False, logging_level="WARNING")
    idle = SubdomainWorker.options(num_cpus=args.cpus).remote(args.cpus)
    idle_private = ray.get(idle.where.remote())["private_mb"]
    ray.kill(idle)

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
        wheres: list[dict] = []
        with tempfile.TemporaryDirectory() as tmp:
            tasks = [LocalTask(s, settings, str(Path(tmp) / f"{s.index}.ckpt")) for s in subs]
            t0 = time.perf_counter()
            # as the driver does: each subdomain's own pixels (or, to compare, one reference to everything)
            ref = {t.sub.index: ray.put(subdomain_arrays(arrays, t.sub)) for t in tasks} if per_subdomain else ray.put(arrays)
            results = run_local_phase(tasks, ref, cpus=args.cpus, gpus=0, slots=slots, max_retries=0, on_event=lambda e: None, on_result=lambda r, w: wheres.append(w)).results
            wall = time.perf_counter() - t0
            store = next((line.strip() for line in memory_summary(address=ray.get_runtime_context().gcs_address, stats_only=True).splitlines() if "Plasma memory usage" in line), "n/a")
            del ref
        train = sum(r.train_seconds for r in results)
        return len(subs), min(slots, len(subs)), wall, train, sum(a.nbytes for a in arrays.values()), store, wheres

    n, workers, wall, train, _, _, small = job(limit=64, image=args.image)
    print(f"{n} subdomains (grid {args.grid}), {args.cpus} CPU each; {len({w['pid'] for w in small})} worker processes on {args.num_cpus} cores")
    print(f"overhead job (1 epoch, 64 images): local phase {wall:.1f} s, in-worker training {train:.1f} s")
    print(f"scheduling overhead per subdomain (upper bound, wall / subdomains): {wall / n:.3f} s   (target < 0.2 s)")

    private_small = max(w["private_mb"] for w in small)
    for per_subdomain in (False, True):
        n, workers, wall, train, data_bytes, store, wheres = job(limit=None, image=args.image, per_subdomain=per_subdomain)
        private_big = max(w["private_mb"] for w in wheres)
        rss = sorted(w["peak_rss_mb"] for w in wheres)[-1]
        share = data_bytes / 2**20 / n
        growth = private_big - private_small
        print(f"\n{'each worker gets its own subdomain (ddray)' if per_subdomain else 'every worker gets the whole data set (before)'}:")
        print(f"  data set: {data_bytes / 2**20:.1f} MiB (a subdomain's share {share:.2f} MiB); object store: {store}")
        print(f"  worker private memory (MiB): idle {idle_private:.0f}, after 64-image job {private_small:.0f}, after full job {private_big:.0f}")
        print(f"  data-dependent growth per worker: {growth:.1f} MiB = {growth / (data_bytes / 2**20):.2f} x the data set, "
              f"{growth / share:.1f} x its share (target: share + a small constant)")
        print(f"  peak RSS per worker (MiB, counts the object-store pages it maps): {rss:.0f}")
    ray.shutdown()


if __name__ == "__main__":
    main()
