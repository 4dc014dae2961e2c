"""Many subdomains on one machine: scheduling overhead and memory.

Simulates an 8x8 = 64-subdomain job with fractional CPU shares
(``cpus_per_subdomain`` 0.25: eight workers on two cores) and reports

1. driver-side scheduling overhead per subdomain: the local phase's wall time
   divided by the number of subdomains, on a job whose training is almost
   free (one epoch on 64 images), so what remains is Ray scheduling, the
   actor pool, progress events and result handling (upper bound);
2. memory: the data set's bytes, the object store's usage (it holds the data
   set once), and each worker's peak RSS above an idle worker's, which must
   grow with the subimage (1/64 of the data), not with the data set.

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
    from ddray.training.spec import training_spec

    ray.init(address="local", num_cpus=args.num_cpus, include_dashboard=False, logging_level="WARNING")
    idle = SubdomainWorker.options(num_cpus=args.cpus).remote(args.cpus)
    idle_private = ray.get(idle.where.remote())["private_mb"]
    ray.kill(idle)

    def job(limit: int | None, image: int):
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
            ref = ray.put(arrays)
            results = run_local_phase(tasks, ref, cpus=args.cpus, gpus=0, slots=slots, max_retries=0, on_event=lambda e: None, on_result=lambda r, w: wheres.append(w))
            wall = time.perf_counter() - t0
            store = next((line.strip() for line in memory_summary(address=ray.get_runtime_context().gcs_address, stats_only=True).splitlines() if "Plasma memory usage" in line), "n/a")
            del ref
        train = sum(r.train_seconds for r in results)
        return len(subs), min(slots, len(subs)), wall, train, sum(a.nbytes for a in arrays.values()), store, wheres

    n, workers, wall, train, _, _, small = job(limit=64, image=args.image)
    print(f"{n} subdomains (grid {args.grid}), {args.cpus} CPU each; {len({w['pid'] for w in small})} worker processes on {args.num_cpus} cores")
    print(f"overhead job (1 epoch, 64 images): local phase {wall:.1f} s, in-worker training {train:.1f} s")
    print(f"scheduling overhead per subdomain (upper bound, wall / subdomains): {wall / n:.3f} s   (target < 0.2 s)")

    n, workers, wall, train, data_bytes, store, wheres = job(limit=None, image=args.image)
    private_small = max(w["private_mb"] for w in small)
    private_big = max(w["private_mb"] for w in wheres)
    print(f"data set: {data_bytes / 2**20:.1f} MiB; object store: {store}")
    print(f"worker private memory (MiB): idle {idle_private:.0f}, after 64-image job {private_small:.0f}, after full job {private_big:.0f}")
    print(f"data-dependent growth per worker: {private_big - private_small:.1f} MiB = {(private_big - private_small) / (data_bytes / 2**20):.2f} x the data set (1.0 would be a full copy per worker)")
    print(f"peak RSS per worker (MiB, counts shared object-store pages): {sorted(w['peak_rss_mb'] for w in wheres)[-1]:.0f}")
    ray.shutdown()


if __name__ == "__main__":
    main()
