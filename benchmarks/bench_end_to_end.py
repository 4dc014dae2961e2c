"""End to end: `ddray run` against the plain global model, each timed as a whole process.

The question the method has to answer: is the decomposed run (local CNNs in parallel + the
coarse DNN) faster than simply training the undecomposed model, and at least as accurate?
Both sides start from nothing (a new Python process: imports, data loading, training,
evaluation, exit) on the same data, the same CNN family (the global model at full width, the
local CNNs at ``--width``), the same epochs, batch size and learning rate, using all cores:

- ``ddray``: ``python -m ddray run CONFIG`` (embedded local Ray, one actor per core);
- ``global``: this script with ``--global-model``: ddray's data loading and training loop in
  one plain PyTorch process with ``torch.set_num_threads(cores)``.

The two alternate ``--repeats`` times (machines here are shared and noisy: compare within one
invocation, never across). Printed: both walls, their ratio, the test accuracies, and ddray's
own phase timings from its results.json (the local phase against its ideal, the sum of the
local trainings spread over the cores).

    python benchmarks/bench_end_to_end.py                 # digits at 64x64, 2x2, small_cnn, 10 epochs
    python benchmarks/bench_end_to_end.py --epochs 3 --repeats 1
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def job_config(*, size: int = 64, grid=(2, 2), overlap: int = 0, model: str = "small_cnn", width: float = 0.5,
               epochs: int = 10, batch_size: int = 64, lr: float = 0.003) -> dict:
    """The benchmark's run (also what bench_run_timeline and bench_submit_latency --digits submit)."""
    return {
        "dataset": {"source": "digits", "image_size": [size, size]},
        "decomposition": {"grid": list(grid), "overlap": overlap},
        "local_model": {"name": model, "width": width},
        "training": {"epochs": epochs, "batch_size": batch_size, "lr": lr},
        "resources": {"cpus_per_subdomain": 1},
        "seed": 0,
    }


def train_global(config_path: str, out_path: str, threads: int) -> None:
    """The plain global model, in this process: what a user would run without ddray."""
    import torch

    from ddray.config import load_config
    from ddray.data import load_dataset
    from ddray.training.loop import evaluate, fit
    from ddray.training.spec import training_spec

    torch.set_num_threads(threads)
    config = load_config(config_path)
    dataset = load_dataset(config.dataset, seed=config.seed, grid=config.decomposition.grid, overlap=config.decomposition.overlap)
    spec = training_spec(config, num_classes=dataset.num_classes, in_channels=dataset.in_channels, baseline="global")
    torch.manual_seed(config.seed)
    model = spec.model.build()
    tensors = {k: torch.from_numpy(v) for k, v in dataset.arrays().items()}
    started = time.perf_counter()
    fit(model, tensors["x_train"], tensors["y_train"], tensors["x_val"], tensors["y_val"],
        epochs=spec.epochs, batch_size=spec.batch_size, optimizer=spec.optimizer, seed=config.seed)
    train_s = time.perf_counter() - started
    _, test_accuracy = evaluate(model, tensors["x_test"], tensors["y_test"])
    Path(out_path).write_text(json.dumps({"test_accuracy": test_accuracy, "train_s": train_s}))


def timed(cmd: list[str], cwd: Path, pythonpath: Path = ROOT) -> float:
    started = time.perf_counter()
    env = {**os.environ, "DDRAY_PLAIN_PROGRESS": "1", "PYTHONPATH": str(pythonpath)}  # this checkout's ddray on both sides
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=64, help="digits upsampled to SIZE x SIZE")
    parser.add_argument("--grid", type=int, nargs=2, default=[2, 2])
    parser.add_argument("--overlap", type=int, default=0)
    parser.add_argument("--model", default="small_cnn")
    parser.add_argument("--width", type=float, default=0.5, help="local CNN width (the global model has 1.0)")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=0.003)
    parser.add_argument("--cores", type=int, default=os.cpu_count())
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--global-model", nargs=2, metavar=("CONFIG", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.global_model:
        train_global(*args.global_model, threads=args.cores)
        return

    walls: dict[str, list[float]] = {"ddray": [], "global": []}
    accuracy: dict[str, list[float]] = {"ddray DNN": [], "global": []}
    phases: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="ddray-e2e-") as tmp:
        tmp = Path(tmp)
        config = tmp / "job.yaml"
        config.write_text(yaml.safe_dump(job_config(size=args.size, grid=args.grid, overlap=args.overlap, model=args.model,
                                                     width=args.width, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr)))
        for r in range(args.repeats):
            order = ("ddray", "global") if r % 2 == 0 else ("global", "ddray")
            for side in order:
                if side == "ddray":
                    out = tmp / f"run{r}"
                    walls["ddray"].append(timed([sys.executable, "-m", "ddray", "run", str(config), "--output", str(out),
                                                 "--num-cpus", str(args.cores)], ROOT))
                    results = json.loads((out / "results.json").read_text())
                    accuracy["ddray DNN"].append(results["aggregation"]["dnn"]["test_accuracy"])
                    local_fit = sum(e["train_seconds"] for e in results["local"])
                    workers = min(args.cores, len(results["local"]))
                    phases.append({**results["timings_s"], "local_ideal": local_fit / workers,
                                   "dnn_fit": results["aggregation"]["dnn"].get("fit_seconds", float("nan"))})
                else:
                    out = tmp / f"global{r}.json"
                    walls["global"].append(timed([sys.executable, __file__, "--global-model", str(config), str(out),
                                                  "--cores", str(args.cores)], ROOT))
                    accuracy["global"].append(json.loads(out.read_text())["test_accuracy"])

    med = {k: statistics.median(v) for k, v in walls.items()}
    print(f"digits {args.size}x{args.size}, grid {args.grid}, {args.model} (local width {args.width}, global 1.0), "
          f"{args.epochs} epochs, {args.cores} cores, {args.repeats} repeat(s), alternating order")
    for side in ("ddray", "global"):
        print(f"{side:7s} wall: " + ", ".join(f"{w:.1f}" for w in walls[side]) + f" s  (median {med[side]:.1f} s)")
    print(f"ratio ddray / global: {med['ddray'] / med['global']:.3f}   (target <= 0.5)")
    for name, values in accuracy.items():
        print(f"test accuracy {name:9s}: " + ", ".join(f"{a:.4f}" for a in values))
    for i, p in enumerate(phases):
        before = p["total_wall"] - p["local_wall"] - p["aggregation_wall"]
        print(f"ddray run {i}: total {p['total_wall']:.1f} s = local phase {p['local_wall']:.1f} s "
              f"({p['local_wall'] / p['local_ideal']:.2f} x its ideal {p['local_ideal']:.1f} s) + aggregation "
              f"{p['aggregation_wall']:.1f} s (DNN fit {p['dnn_fit']:.1f} s) + the rest {before:.1f} s; "
              f"process wall {walls['ddray'][i]:.1f} s")


if __name__ == "__main__":
    main()
