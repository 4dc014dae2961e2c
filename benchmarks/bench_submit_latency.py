"""Time from a REST submission to the first finished epoch, on a warm cluster.

Starts its own service (``ddray serve``; by default with its own local Ray
head, or joined to ``--ray-address``), waits until it is healthy (the cluster
is warm: head, dashboard and Jobs API up), then submits the same small job
``--repeats`` times, one after the other, and reads each job's milestones from
``GET /jobs/{id}`` polled every 50 ms:

* ``running``: the service claimed the job and Ray accepted the Ray job;
* ``first epoch``: the first subdomain reported a finished epoch (the Ray job's
  driver started, imported torch, loaded data, started its actors);
* ``end``: the job succeeded;
* ``local / ideal``: from the job's results.json, its local phase's wall time against the ideal
  (the subdomains' own training seconds spread over the workers that ran them): with warm
  workers the phase does not include their start.

It does so twice in one invocation: on a service without warm workers
(``DDRAY_WARM_WORKERS=0``, every job starts its own) and on one with the
default warm pool (workers started while the service is idle), and prints
the warm / cold ratios.

    .venv/bin/python benchmarks/bench_submit_latency.py [--repeats 3] [--ray-address HOST:PORT]
    .venv/bin/python benchmarks/bench_submit_latency.py --digits --epochs 10   # the end-to-end benchmark's run

Loopback only, bounded in time. Figures are medians over the repeats; the
machine is shared, so quote ratios or medians, never a single run.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]  # the repo (api, ddray) and the test helpers

from bench_end_to_end import job_config as end_to_end_config  # noqa: E402
from service_doubles import Service, tiny_job  # noqa: E402


def milestones(client, job_id: str, submitted: float, timeout: float) -> dict[str, float]:
    out: dict[str, float] = {}
    deadline = submitted + timeout
    while time.perf_counter() < deadline:
        job = client.get(f"/jobs/{job_id}").json()
        now = time.perf_counter() - submitted
        if job["status"] == "running":
            out.setdefault("running", now)
        if any((s.get("epoch") or 0) >= 1 for s in job["subdomains"]):
            out.setdefault("first_epoch", now)
        if job["status"] in ("succeeded", "failed", "cancelled"):
            if job["status"] != "succeeded":
                raise RuntimeError(f"job {job_id} {job['status']}: {job['error']}")
            out["end"] = now
            return out
        time.sleep(0.05)
    raise TimeoutError(f"job {job_id} did not finish in {timeout:.0f} s")


def job_config(args) -> dict:
    """The tests' tiny job, or with ``--digits`` the end-to-end benchmark's run (digits at 64x64, 2x2, small_cnn 0.5)."""
    return end_to_end_config(epochs=args.epochs) if args.digits else tiny_job(epochs=args.epochs)


def measure(tmp: Path, args, warm_workers: int | None) -> list[dict[str, float]]:
    """One service (cold: no warm workers; warm: the service's default), ``--repeats`` jobs one after another."""
    extra = ["--ray-address", args.ray_address] if args.ray_address else ["--ray-num-cpus", "2", "--ray-object-store-mb", "200"]
    label = "cold" if warm_workers == 0 else "warm"
    svc = Service(tmp / f"state-{label}", tmp / "data", extra_args=extra, warm_workers=warm_workers)
    t0 = time.perf_counter()
    svc.start(timeout=180)
    print(f"[{label}] service healthy (cluster warm) after {time.perf_counter() - t0:.1f} s")
    rows = []
    try:
        with svc.client() as client:
            for i in range(args.repeats):
                time.sleep(args.pause)  # a user's next job rarely comes within the second the last one ended
                submitted = time.perf_counter()
                job_id = client.post("/jobs", json={"name": f"latency-{i}", "config": job_config(args)}).json()["id"]
                row = milestones(client, job_id, submitted, args.timeout)
                results = client.get(f"/jobs/{job_id}/results").json()
                row["warm_workers"] = results.get("workers", {}).get("warm", 0)
                workers = sum(results.get("workers", {}).get("nodes", {}).values()) or 1
                ideal = sum(e["train_seconds"] for e in results["local"]) / min(workers, len(results["local"]))
                row["local_ratio"] = results["timings_s"]["local_wall"] / ideal
                rows.append(row)
                print(
                    f"[{label}] job {i}: running {row.get('running', float('nan')):.2f} s, first epoch {row['first_epoch']:.2f} s, "
                    f"end {row['end']:.2f} s, local phase {row['local_ratio']:.2f} x its ideal, warm workers used {row['warm_workers']}"
                )
    finally:
        svc.stop()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--digits", action="store_true", help="submit bench_end_to_end's digits run instead of the tiny test job")
    parser.add_argument("--pause", type=float, default=8.0, help="seconds between one job's end and the next submission")
    parser.add_argument("--ray-address", help="join this cluster instead of starting a local head")
    parser.add_argument("--timeout", type=float, default=300.0)
    args = parser.parse_args()

    results = {}
    with tempfile.TemporaryDirectory(prefix="ddray-bench-") as tmp:
        for label, warm in (("cold", 0), ("warm", None)):
            results[label] = measure(Path(tmp), args, warm)
    for key in ("running", "first_epoch", "end", "local_ratio"):
        medians = {}
        for label, rows in results.items():
            values = [r[key] for r in rows if key in r]
            if values:
                medians[label] = statistics.median(values)
                unit = "x" if key == "local_ratio" else "s"
                print(f"[{label}] median {key:>11}: {medians[label]:6.2f} {unit}  (min {min(values):.2f}, max {max(values):.2f}, n={len(values)})")
        if len(medians) == 2 and medians["cold"] > 0:
            print(f"warm / cold {key}: {medians['warm'] / medians['cold']:.2f}")


if __name__ == "__main__":
    main()
