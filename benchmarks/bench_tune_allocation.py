"""tune.allocation: uniform vs adaptive at the same total number of trials, on data whose subdomains differ.

The data (made here, saved as an .npz): 16x16 images cut 2x2 into four 8x8 subdomains, 4 classes.
Every pixel is Gaussian noise; the label is written only into the top row of subdomains:

- subdomain 0 (top left): a class template with amplitude ``--strong`` (easy to learn with a good lr),
- subdomain 1 (top right): another class template with amplitude ``--weak`` (hard: the result
  depends much on the configuration),
- subdomains 2 and 3 (bottom): noise only, at chance for every configuration.

Both allocations run the same search (random search over a wide ``lr`` range, where too small and too
large learning rates leave a local CNN near chance) with the same budget, ``num_samples x 4`` trials;
adaptive gives every subdomain ``min_trials_per_subdomain`` first and the rest in rounds of
``max_concurrent_trials``. Reported over several seeds (data, split, searcher and training seeds all
change with the seed), mean +- std: the final DNN test accuracy, the best validation accuracy of the
informative subdomains 0 and 1 (what the search maximises) and their local test accuracy, and the
trials they received.

    python benchmarks/bench_tune_allocation.py [--seeds 0 1 2 3 4] [--num-samples 4] [--min-trials 2] [--epochs 3]

Measured on the shared 2-core machine (2026-11-23), seeds 0-4, mean +- std (docs/tuning.md):

- budget 16, minimum 2: DNN uniform 0.792 +- 0.036, adaptive 0.773 +- 0.170 (better in 3 seeds,
  equal in 1, much worse in 1 where the strong subdomain's 2 minimum trials both failed);
  informative best val 0.579 -> 0.608.
- budget 20, minimum 3: DNN uniform 0.818 +- 0.060, adaptive 0.842 +- 0.037 (never worse);
  informative best val 0.606 -> 0.625, local test 0.625 -> 0.646.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

INFORMATIVE = (0, 1)


def make_data(path: Path, *, seed: int, samples: int, strong: float, weak: float) -> None:
    rng = np.random.default_rng(1000 + seed)
    classes, size, half = 4, 16, 8
    templates = rng.choice([-1.0, 1.0], size=(2, classes, half, half))
    y = rng.integers(0, classes, size=samples)
    x = rng.normal(size=(samples, size, size))
    x[:, :half, :half] += strong * templates[0, y]
    x[:, :half, half:] += weak * templates[1, y]
    np.savez(path, x=x[:, None].astype(np.float32), y=y.astype(np.int64))


def config(data: Path, *, allocation: str, seed: int, args: argparse.Namespace) -> dict:
    tune = {
        "num_samples": args.num_samples,
        "search_alg": "random",
        "max_concurrent_trials": 2,
        "allocation": allocation,
        "space": {"lr": {"loguniform": [1e-5, 0.3]}},
    }
    if allocation == "adaptive":
        tune["min_trials_per_subdomain"] = args.min_trials
    return {
        "dataset": {"source": "npz", "path": str(data)},
        "decomposition": {"grid": [2, 2]},
        "local_model": {"name": "small_cnn", "width": 0.25},
        "training": {"epochs": args.epochs, "batch_size": 32},
        "aggregation": {"methods": ["dnn", "average"], "dnn": {"epochs": 60}},
        "tune": tune,
        "seed": seed,
    }


def one_run(data: Path, out: Path, allocation: str, seed: int, args: argparse.Namespace) -> dict:
    from rich.console import Console

    from ddray.config import parse_config
    from ddray.orchestration.driver import run

    started = time.perf_counter()
    results = run(parse_config(config(data, allocation=allocation, seed=seed, args=args)), out, console=Console(quiet=True))
    best = {e["subdomain"]: e["validation_accuracy"] for e in results["tune"]["best"]}
    local = {e["subdomain"]: e["test_accuracy"] for e in results["local"]}
    return {
        "allocation": allocation,
        "seed": seed,
        "dnn": results["aggregation"]["dnn"]["test_accuracy"],
        "informative_val": float(np.mean([best[i] for i in INFORMATIVE])),
        "informative_test": float(np.mean([local[i] for i in INFORMATIVE])),
        "trials": results["tune"]["trials_per_subdomain"],
        "wall_s": round(time.perf_counter() - started, 1),
    }


def _ms(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.3f} ± {sd:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--num-samples", type=int, default=4, help="uniform: trials per subdomain; budget = this x 4")
    parser.add_argument("--min-trials", type=int, default=2, help="adaptive: tune.min_trials_per_subdomain")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--samples", type=int, default=600)
    parser.add_argument("--strong", type=float, default=0.5)
    parser.add_argument("--weak", type=float, default=0.25)
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--json", help="also write the rows to this file")
    args = parser.parse_args()

    import ray

    ray.init(num_cpus=args.cores, include_dashboard=False, object_store_memory=200 * 1024**2, logging_level="ERROR")
    rows = []
    with tempfile.TemporaryDirectory(prefix="ddray-bench-alloc-") as tmp:
        for seed in args.seeds:
            data = Path(tmp) / f"data{seed}.npz"
            make_data(data, seed=seed, samples=args.samples, strong=args.strong, weak=args.weak)
            for allocation in ("uniform", "adaptive"):
                row = one_run(data, Path(tmp) / f"{allocation}{seed}", allocation, seed, args)
                rows.append(row)
                print(json.dumps(row), flush=True)
    ray.shutdown()
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    print(f"\n{len(args.seeds)} seeds, budget {args.num_samples * 4} trials, {args.epochs} epochs per trial")
    print("| allocation | DNN test acc | best val acc, subdomains 0-1 | local test acc, subdomains 0-1 | trials per subdomain (mean) | wall s |")
    print("|---|---|---|---|---|---|")
    for allocation in ("uniform", "adaptive"):
        mine = [r for r in rows if r["allocation"] == allocation]
        trials = np.mean([r["trials"] for r in mine], axis=0)
        print(f"| {allocation} | {_ms([r['dnn'] for r in mine])} | {_ms([r['informative_val'] for r in mine])} | "
              f"{_ms([r['informative_test'] for r in mine])} | {' / '.join(f'{t:.1f}' for t in trials)} | "
              f"{statistics.mean(r['wall_s'] for r in mine):.0f} |")


if __name__ == "__main__":
    main()
