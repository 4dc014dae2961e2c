"""A sweep over seeds, as a whole process: what each run after the first saves by training on the
workers the run before left started (docs/sweeps.md, "Workers stay up between runs").

The run of bench_end_to_end.py (digits at 64x64, 2x2, small_cnn at width 0.5, 10 epochs) swept over
``--seeds`` seeds with ``ddray sweep``. Printed: the sweep's process wall and, for every run, the
warm workers it took, its local phase against its ideal (the sum of its local trainings spread
over the cores), and its own wall. Run it from two checkouts to compare them (``--checkout``:
the tree whose ddray runs; this script and the interpreter stay the same).

    python benchmarks/bench_sweep.py [--seeds 3] [--epochs 10] [--checkout DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import yaml

from bench_end_to_end import ROOT, job_config, timed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--cores", type=int, default=os.cpu_count())
    parser.add_argument("--checkout", type=Path, default=ROOT, help="the ddray tree to run (default: this one)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="ddray-sweep-bench-") as tmp:
        tmp = Path(tmp)
        config = tmp / "sweep.yaml"
        config.write_text(yaml.safe_dump({**job_config(size=args.size, epochs=args.epochs), "sweep": {"seed": list(range(args.seeds))}}))
        out = tmp / "out"
        wall = timed([sys.executable, "-m", "ddray", "sweep", str(config), "--output", str(out),
                      "--num-cpus", str(args.cores)], args.checkout.resolve(), pythonpath=args.checkout.resolve())
        print(f"ddray sweep of {args.seeds} seeds (digits {args.size}x{args.size}, 2x2, small_cnn 0.5, {args.epochs} epochs, "
              f"{args.cores} cores), {args.checkout.resolve()}: {wall:.1f} s as a whole process")
        for k in range(args.seeds):
            run = out / "runs" / f"seed-{k}"
            results = json.loads((run / "results.json").read_text())
            progress = json.loads((run / "progress.json").read_text())
            timings = results["timings_s"]
            workers = min(args.cores, len(results["local"]))
            ideal = sum(e["train_seconds"] for e in results["local"]) / workers
            warm = progress["phases"]["local_training"].get("warm_workers", 0)
            print(f"  run seed-{k}: {warm} warm worker(s); local phase {timings['local_wall']:.1f} s = "
                  f"{timings['local_wall'] / ideal:.2f} x its ideal {ideal:.1f} s; run {timings['total_wall']:.1f} s; "
                  f"DNN {results['aggregation']['dnn']['test_accuracy']:.3f}")


if __name__ == "__main__":
    main()
