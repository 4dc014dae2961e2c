"""Streaming and multilevel coarse levels (issue #14, docs/coarse.md), on digits and on 3D volumes.

Each case is one ddray run (embedded local Ray, ``--cpus`` workers) with ``aggregation.streaming: true``
and ``aggregation.levels``; from its results.json:

- streaming: seconds into the local phase to the first global answer and to the first answer within
  1 point of the final test accuracy, against waiting for every CNN (the local phase's wall + the DNN's
  fit: when the flat DNN's answer exists);
- multilevel vs flat: test accuracy, and coarse parameters (all regional DNNs + the global DNN
  together, and the largest single coarse model) against the flat DNN's.

Cases: digits resized to 32x32 on 4x4 (16 subdomains, regions [[2, 2]]) and 8x8 (64, [[2, 2], [2, 2]]);
3D blobs (4 classes, 16^3 volumes) on 4x2x2 (16, [[2, 2, 2]]) and 4x4x4 (64, [[2, 2, 2]]).
Machines here are shared and noisy: compare within one invocation.

    python benchmarks/bench_coarse.py                      # all four cases
    python benchmarks/bench_coarse.py --cases digits16 --epochs 2

    python benchmarks/bench_coarse.py --cases digits16 --overhead 2   # local phase: plain vs streamed, alternating

Figures of 23 Nov 2026 (2 shared cores, load 6-13; 3 local epochs, DNN hidden [64] x 60 epochs) and what they
say: docs/coarse.md. In short: first answer 4.8-13.5 s vs 8.7-34.5 s waiting; within 1 point early only where
few subdomains carry the label (3D blobs, 64: 25.5 vs 33.6 s); multilevel's largest coarse model 3,274
parameters at 16 and 64 digit subdomains (flat DNN 10,954 and 41,674); accuracy -2 to -3 points on digits,
+2.5 to +5 points on 3D counting.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CASES = {
    "digits16": ({"source": "digits", "image_size": [32, 32]}, [4, 4], [[2, 2]]),
    "digits64": ({"source": "digits", "image_size": [32, 32]}, [8, 8], [[2, 2], [2, 2]]),
    "blobs3d16": ({"source": "synthetic", "kind": "blobs", "classes": 4, "samples": 600, "size": [16, 16, 16]}, [4, 2, 2], [[2, 2, 2]]),
    "blobs3d64": ({"source": "synthetic", "kind": "blobs", "classes": 4, "samples": 600, "size": [16, 16, 16]}, [4, 4, 4], [[2, 2, 2]]),
    # the label is how many of the 2x2x2 cells are marked (9 classes): no subvolume alone can know it
    "count3d16": ({"source": "synthetic", "kind": "count", "cells": [2, 2, 2], "samples": 800, "size": [16, 16, 16]}, [4, 2, 2], [[2, 2, 2]]),
    "count3d64": ({"source": "synthetic", "kind": "count", "cells": [2, 2, 2], "samples": 800, "size": [16, 16, 16]}, [4, 4, 4], [[2, 2, 2]]),
}
DEFAULT_CASES = ["digits16", "digits64", "blobs3d16", "blobs3d64"]


def case_config(name: str, args: argparse.Namespace, coarse: bool = True) -> dict:
    dataset, grid, levels = CASES[name]
    if not coarse:  # the plain run: one DNN after every CNN
        levels = []
    return {
        "dataset": dataset,
        "decomposition": {"grid": grid, "overlap": 0},
        "local_model": {"name": "small_cnn", "width": args.width},
        "training": {"epochs": args.epochs, "batch_size": 64, "lr": 0.01},
        "aggregation": {"dnn": {"hidden": [64], "epochs": args.dnn_epochs, "lr": 0.01}, "streaming": coarse, "levels": levels},
        "resources": {"cpus_per_subdomain": 1},
        "seed": 0,
    }


def measure(results: dict) -> dict:
    from ddray.report import stream_milestones

    agg = results["aggregation"]
    marks = stream_milestones(agg["stream"])
    local_wall = results["timings_s"]["local_wall"]
    waiting = local_wall + agg["dnn"]["train_wall_s"]
    multi = agg["multilevel"]
    return {
        "subdomains": results["decomposition"]["subdomains"],
        "refits": len(agg["stream"]),
        "first_s": marks["first"]["seconds"],
        "first_done": marks["first"]["subdomains_done"],
        "first_acc": marks["first"]["test_accuracy"],
        "within_1pt_s": marks["within_1_point"]["seconds"],
        "within_1pt_done": marks["within_1_point"]["subdomains_done"],
        "waiting_s": round(waiting, 2),
        "last_cnn_s": max(e.get("finished_s") or 0 for e in results["local"]),
        "dnn_acc": agg["dnn"]["test_accuracy"],
        "multilevel_acc": multi["test_accuracy"],
        "average_acc": agg["average"]["test_accuracy"],
        "vote_acc": agg["vote"]["test_accuracy"],
        "flat_params": multi["flat_dnn_parameters"],
        "multilevel_params": multi["parameters"],
        "largest_coarse_params": multi["largest_coarse_parameters"],
        "multilevel_after_local_s": multi["train_wall_s"],
        "dnn_fit_s": agg["dnn"]["train_wall_s"],
        "regions_level1": [round(r["test_accuracy"], 3) for r in multi["regions"] if r["level"] == 1],
        "stream": [(e["subdomains_done"], e["seconds"], round(e["test_accuracy"], 4)) for e in agg["stream"]],
        "cnn_finished_s": sorted(e.get("finished_s") for e in results["local"]),
    }


def overhead(args: argparse.Namespace, name: str, run, parse_config, Console) -> dict:
    """Local-phase wall of plain vs streamed (+ levels) runs: the first run of a process is slow, so it is a warm-up."""
    walls: dict[str, list[float]] = {"plain": [], "streamed": []}
    with tempfile.TemporaryDirectory(prefix="ddray-bench-coarse-") as tmp:
        order = ["warm-up"] + [kind for i in range(args.overhead) for kind in (("plain", "streamed") if i % 2 == 0 else ("streamed", "plain"))]
        for n, kind in enumerate(order):
            config = parse_config(case_config(name, args, coarse=kind == "streamed"))
            results = run(config, Path(tmp) / f"{n}", num_cpus=args.cpus, console=Console(stderr=True, quiet=True))
            if kind != "warm-up":
                walls[kind].append(results["timings_s"]["local_wall"])
            print(kind, results["timings_s"]["local_wall"], flush=True)
    return {"case": name, "local_wall_s": walls, "median": {k: sorted(v)[len(v) // 2] for k, v in walls.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", default=DEFAULT_CASES, choices=list(CASES))
    parser.add_argument("--plain", action="store_true", help="also run each case without streaming and levels (the local phase's cost of them)")
    parser.add_argument("--overhead", type=int, default=0, metavar="PAIRS",
                        help="only measure the local phase's cost of streaming + levels: a warm-up run, then PAIRS of plain and "
                        "streamed runs of the first case in alternating order")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--dnn-epochs", type=int, default=60)
    parser.add_argument("--width", type=float, default=0.25)
    parser.add_argument("--cpus", type=int, default=2)
    parser.add_argument("--out", type=Path, help="write the figures as JSON here")
    args = parser.parse_args()

    import os

    os.environ.setdefault("DDRAY_PLAIN_PROGRESS", "1")
    from rich.console import Console

    from ddray.config import parse_config
    from ddray.orchestration.driver import run

    figures = {}
    if args.overhead:
        print(json.dumps(overhead(args, args.cases[0], run, parse_config, Console)))
        return
    with tempfile.TemporaryDirectory(prefix="ddray-bench-coarse-") as tmp:
        for name in args.cases:
            if args.plain:  # first, so that a warm cache never favours it
                plain = run(parse_config(case_config(name, args, coarse=False)), Path(tmp) / f"{name}-plain", num_cpus=args.cpus,
                            console=Console(stderr=True, quiet=True))
            started = time.perf_counter()
            results = run(parse_config(case_config(name, args)), Path(tmp) / name, num_cpus=args.cpus,
                          console=Console(stderr=True, quiet=True))
            figures[name] = {**measure(results), "run_s": round(time.perf_counter() - started, 1)}
            if args.plain:
                figures[name]["plain_local_wall_s"] = plain["timings_s"]["local_wall"]
                figures[name]["plain_waiting_s"] = round(plain["timings_s"]["local_wall"] + plain["aggregation"]["dnn"]["train_wall_s"], 2)
                figures[name]["local_wall_s"] = results["timings_s"]["local_wall"]
            print(name, json.dumps(figures[name]), flush=True)
    header = ("case", "N", "first answer s (n, acc)", "within 1pt s (n)", "waiting s", "dnn", "multilevel", "avg", "vote",
              "coarse params flat / multilevel (largest)")
    print("\n| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    for name, f in figures.items():
        print(f"| {name} | {f['subdomains']} | {f['first_s']:.1f} ({f['first_done']}, {f['first_acc']:.3f}) | "
              f"{f['within_1pt_s']:.1f} ({f['within_1pt_done']}) | {f['waiting_s']:.1f} | {f['dnn_acc']:.3f} | "
              f"{f['multilevel_acc']:.3f} | {f['average_acc']:.3f} | {f['vote_acc']:.3f} | "
              f"{f['flat_params']:,} / {f['multilevel_params']:,} ({f['largest_coarse_params']:,}) |")
    if args.out:
        args.out.write_text(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
