"""Where a `ddray run`'s seconds go: CPU per process kind over time, and the run's own events.

Starts ``python -m ddray run`` (digits, the end-to-end benchmark's configuration by default)
and samples its whole process tree from /proc every 0.1 s (Linux only): the CPU seconds each
kind of process used in each half second (the driver, Ray's own processes, the subdomain
workers), and when the run's progress.json changed (phase, each subdomain's status and epoch).
On an N-core machine a half second holds N * 0.5 CPU seconds; the ``idle`` column is what was
left unused, i.e. where a faster run must find its time.

    python benchmarks/bench_run_timeline.py
    python benchmarks/bench_run_timeline.py --size 32 --epochs 3
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from api.cluster import process_cmdline
from bench_end_to_end import job_config  # this folder is on sys.path when a benchmark runs as a script

ROOT = Path(__file__).resolve().parents[1]
TICK = os.sysconf("SC_CLK_TCK")
RAY_HELPERS = ("gcs_server", "raylet", "dashboard", "log_monitor", "monitor.py", "ray_process_reaper")
KINDS = ("driver", "ray", "workers")


def process_table() -> dict[int, tuple[int, float]]:
    """pid -> (parent pid, CPU seconds so far) of every process."""
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        table[int(entry)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / TICK)
    return table


def kind(pid: int, driver: int) -> str:
    if pid == driver:
        return "driver"
    cmd = process_cmdline(pid)
    if "DashboardAgent" in cmd or "RuntimeEnvAgent" in cmd:  # agents are Ray's, though titled ray::
        return "ray"
    if "default_worker.py" in cmd or cmd.startswith("ray::"):  # a worker process, before and after it takes an actor
        return "workers"
    return "ray" if any(name in cmd for name in RAY_HELPERS) else "workers"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--grid", type=int, nargs=2, default=[2, 2])
    parser.add_argument("--width", type=float, default=0.5)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--cores", type=int, default=os.cpu_count())
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="ddray-timeline-") as tmp:
        config, out = Path(tmp) / "job.yaml", Path(tmp) / "run"
        config.write_text(yaml.safe_dump(job_config(size=args.size, grid=args.grid, width=args.width, epochs=args.epochs)))
        env = {**os.environ, "DDRAY_PLAIN_PROGRESS": "1", "PYTHONPATH": str(ROOT)}
        started = time.monotonic()
        proc = subprocess.Popen([sys.executable, "-m", "ddray", "run", str(config), "--output", str(out), "--num-cpus", str(args.cores)],
                                cwd=tmp, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        seen: dict[int, float] = {}  # pid -> CPU seconds at the last sample
        kinds: dict[int, str] = {}
        bins: dict[float, dict[str, float]] = {}
        events: list[tuple[float, str]] = []
        last_progress = None
        while proc.poll() is None:
            now = time.monotonic() - started
            table = process_table()
            tree, frontier = {proc.pid}, [proc.pid]
            while frontier:  # the run's process and all its descendants
                parent = frontier.pop()
                children = [pid for pid, (ppid, _) in table.items() if ppid == parent and pid not in tree]
                tree.update(children)
                frontier += children
            slot = bins.setdefault(int(now * 2) / 2, dict.fromkeys(KINDS, 0.0))
            for pid in tree & table.keys():
                kinds[pid] = kinds.get(pid) or kind(pid, proc.pid)
                slot[kinds[pid]] += table[pid][1] - seen.get(pid, 0.0)
                seen[pid] = table[pid][1]
            try:
                progress = json.loads((out / "progress.json").read_text())
                state = f"{progress.get('phase')}: " + " ".join(
                    f"{k}:{v.get('status', '')}{'@' + str(v['epoch']) if v.get('epoch') else ''}" for k, v in progress.get("subdomains", {}).items())
                if state != last_progress:
                    events.append((now, state))
                    last_progress = state
            except (OSError, ValueError):
                pass
            time.sleep(0.1)
        wall = time.monotonic() - started
        if proc.returncode != 0:
            sys.exit(f"ddray run failed ({proc.returncode}):\n{proc.stderr.read()[-3000:]}")
        timings = json.loads((out / "results.json").read_text())["timings_s"]

    print(f"process wall {wall:.2f} s; results.json timings_s {timings}")
    for at, state in events:
        print(f"{at:6.2f} s  {state}")
    capacity = args.cores * 0.5
    print(f"\nCPU seconds per half second ({args.cores} cores: {capacity:.1f} per row)")
    print("     t " + "".join(f"{k:>9s}" for k in KINDS) + "     idle")
    totals = dict.fromkeys(KINDS, 0.0)
    for at in sorted(bins):
        row = bins[at]
        for k in KINDS:
            totals[k] += row[k]
        print(f"{at:6.1f} " + "".join(f"{row[k]:9.2f}" for k in KINDS) + f"{max(0.0, capacity - sum(row.values())):9.2f}")
    used = sum(totals.values())
    print("total  " + "".join(f"{totals[k]:9.2f}" for k in KINDS)
          + f"   {used:.1f} CPU s of {wall * args.cores:.1f} ({used / (wall * args.cores):.0%} used)")


if __name__ == "__main__":
    main()
