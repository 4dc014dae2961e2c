"""Latency of GET /jobs/{id} at a fixed request rate while a job trains, and the job's wall time with vs without load.

Loopback only (the service listens on 127.0.0.1 and the load goes there),
bounded in requests and time. It starts its own service (``ddray serve``, local
Ray head) in a temporary state dir, then runs the same small job alternately
without and with load:

    .venv/bin/python benchmarks/bench_api_load.py [--rate 200] [--repeats 2] [--epochs 300]

Targets (issue #4): p99 under 20 ms at 200 requests/s, and the job's wall time
within 5 % of the unloaded run. Latency is measured per request from send to
the end of the response on one keep-alive connection; "late" counts requests
the client could not send on schedule (a sign the client, not the server, fell
behind).

Wall times are only comparable on an otherwise idle machine; the script also
reports the CPU the load itself took (server + client) as a share of the
machine, which is the slowdown to expect for a CPU-bound job and does not
depend on other processes.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]  # the repo (api, ddray) and the test helpers

from service_doubles import Service, tiny_job  # noqa: E402

FINAL = ("succeeded", "failed", "cancelled")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = min(len(ordered) - 1, max(0, int(round(q / 100 * (len(ordered) - 1)))))
    return ordered[k]


class Conn:
    """A keep-alive HTTP/1.1 connection to 127.0.0.1 (http.client: little client-side CPU)."""

    def __init__(self, port: int, token: str):
        self.port = port
        self.headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)

    def request(self, method: str, path: str, body: dict | None = None) -> tuple[int, bytes]:
        payload = json.dumps(body).encode() if body is not None else None
        for attempt in (1, 2):  # the server closes idle keep-alive connections: reconnect once
            try:
                self.conn.request(method, path, body=payload, headers=self.headers)
                resp = self.conn.getresponse()
                return resp.status, resp.read()
            except (http.client.HTTPException, OSError):
                self.conn.close()
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def json(self, method: str, path: str, body: dict | None = None) -> dict:
        status, data = self.request(method, path, body)
        if status >= 400:
            raise RuntimeError(f"{method} {path}: HTTP {status} {data[:300]!r}")
        return json.loads(data)


class RawGet:
    """The load's client: one keep-alive socket, a pre-built request, minimal parsing.

    It keeps the client's own CPU small, since on a 2-core machine every cycle
    the client spends is taken from the training job too.
    """

    def __init__(self, port: int, token: str, path: str):
        self.port = port
        self.request = (f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {token}\r\n\r\n").encode()
        self.sock = self._connect()
        self.buf = b""

    def _connect(self) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=30)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    def get(self) -> tuple[int, bytes]:
        try:
            self.sock.sendall(self.request)
            while b"\r\n\r\n" not in self.buf:
                chunk = self.sock.recv(65536)
                if not chunk:
                    raise ConnectionError("closed")
                self.buf += chunk
            head, _, rest = self.buf.partition(b"\r\n\r\n")
            status = int(head[9:12])
            length = 0
            for line in head.split(b"\r\n")[1:]:
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            while len(rest) < length:
                chunk = self.sock.recv(65536)
                if not chunk:
                    raise ConnectionError("closed")
                rest += chunk
            body, self.buf = rest[:length], rest[length:]
            return status, body
        except OSError:
            self.sock.close()
            self.sock, self.buf = self._connect(), b""
            raise

    def close(self) -> None:
        self.sock.close()


def wait_running(conn: Conn, job_id: str, timeout: float = 180) -> None:
    """Until the job trains (local_training phase), so the load overlaps the training."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = conn.json("GET", f"/jobs/{job_id}")
        if job["status"] in FINAL or job.get("phase") in ("local_training", "search", "aggregation"):
            return
        time.sleep(0.2)
    raise TimeoutError(f"job {job_id} did not start training")


def wait_final(conn: Conn, job_id: str, timeout: float = 900) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = conn.json("GET", f"/jobs/{job_id}")
        if job["status"] in FINAL:
            return job
        time.sleep(0.5)
    raise TimeoutError(f"job {job_id} did not finish in {timeout:.0f} s")


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def load(conn: Conn, job_id: str, rate: float, max_requests: int, max_seconds: float, server_pid: int) -> dict:
    """Open-loop GETs at ``rate``/s until the job ends (checked from the responses) or a bound is hit."""
    raw = RawGet(conn.port, conn.headers["Authorization"].split(" ", 1)[1], f"/jobs/{job_id}")
    server_cpu0, client_cpu0 = process_cpu_s(server_pid), time.process_time()
    latencies: list[float] = []
    errors = late = 0
    interval = 1.0 / rate
    start = time.perf_counter()
    status = "running"
    i = 0
    while i < max_requests and time.perf_counter() - start < max_seconds:
        scheduled = start + i * interval
        now = time.perf_counter()
        if scheduled > now:
            time.sleep(scheduled - now)
        elif now - scheduled > interval:
            late += 1
        t0 = time.perf_counter()
        try:
            code, body = raw.get()
        except (ValueError, OSError):
            errors += 1
            i += 1
            continue
        latencies.append(time.perf_counter() - t0)
        i += 1
        if code != 200:
            errors += 1
        elif i % 50 == 0:  # a cheap look at the status now and then
            status = json.loads(body)["status"]
            if status in FINAL:
                break
    elapsed = time.perf_counter() - start
    raw.close()
    server_cpu, client_cpu = process_cpu_s(server_pid) - server_cpu0, time.process_time() - client_cpu0
    ms = [x * 1000 for x in latencies]
    return {
        "server_cpu_ms_per_request": round(1000 * server_cpu / max(1, i), 3),
        "client_cpu_ms_per_request": round(1000 * client_cpu / max(1, i), 3),
        # share of the machine the load took from training: the expected slowdown of a CPU-bound job
        "cpu_share_pct": round(100 * (server_cpu + client_cpu) / (elapsed * (os.cpu_count() or 1)), 2),
        "requests": i,
        "seconds": round(elapsed, 2),
        "achieved_rate": round(i / elapsed, 1) if elapsed else 0.0,
        "errors": errors,
        "late": late,
        "p50_ms": round(percentile(ms, 50), 2),
        "p90_ms": round(percentile(ms, 90), 2),
        "p99_ms": round(percentile(ms, 99), 2),
        "max_ms": round(max(ms), 2) if ms else float("nan"),
        "mean_ms": round(statistics.fmean(ms), 2) if ms else float("nan"),
    }


def run_job(conn: Conn, config: dict, name: str, rate: float | None, args: argparse.Namespace) -> dict:
    job_id = conn.json("POST", "/jobs", {"name": name, "config": config})["id"]
    wait_running(conn, job_id)
    stats = load(conn, job_id, rate, args.max_requests, args.max_seconds, args.server_pid) if rate else None
    job = wait_final(conn, job_id)
    if job["status"] != "succeeded":
        raise RuntimeError(f"benchmark job {job_id} {job['status']}: {job.get('error')}")
    t = job["timings"]
    return {
        "job": job_id,
        "load": stats,
        "total_wall_s": t["results"].get("total_wall"),
        "local_wall_s": t["results"].get("local_wall"),
        "service_run_s": t["run_s"],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=200.0, help="requests per second")
    parser.add_argument("--repeats", type=int, default=2, help="pairs of (no load, load) runs")
    parser.add_argument("--epochs", type=int, default=300, help="epochs of the benchmark job (sets its length)")
    parser.add_argument("--samples", type=int, default=240)
    parser.add_argument("--max-requests", type=int, default=60_000, help="bound on requests per loaded run")
    parser.add_argument("--max-seconds", type=float, default=300.0, help="bound on the load duration per run")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    if args.rate <= 0 or args.rate > 2000:
        parser.error("--rate must be in (0, 2000]")

    config = tiny_job(epochs=args.epochs, samples=args.samples)
    with tempfile.TemporaryDirectory(prefix="ddray-bench-") as tmp:
        svc = Service(Path(tmp) / "state", Path(tmp) / "data", extra_args=["--ray-num-cpus", "2", "--ray-object-store-mb", "200"])
        (Path(tmp) / "data").mkdir()
        print("starting the service (local Ray head) ...", file=sys.stderr)
        svc.start(timeout=180)
        args.server_pid = svc.proc.pid
        try:
            conn = Conn(svc.port, svc.token)
            print("warm-up job ...", file=sys.stderr)
            run_job(conn, tiny_job(epochs=2), "warm-up", None, args)  # first-run costs (imports, caches) out of the way
            runs = []
            for r in range(args.repeats):
                for rate in (None, args.rate):
                    label = f"{'load' if rate else 'no load'} #{r + 1}"
                    print(f"job ({label}) ...", file=sys.stderr)
                    runs.append({"label": label, **run_job(conn, config, label, rate, args)})
        finally:
            svc.stop()

    base = [r for r in runs if r["load"] is None]
    loaded = [r for r in runs if r["load"] is not None]
    all_stats = [r["load"] for r in loaded]
    summary = {
        "rate": args.rate,
        "p50_ms": max(s["p50_ms"] for s in all_stats),
        "p99_ms": max(s["p99_ms"] for s in all_stats),
        "errors": sum(s["errors"] for s in all_stats),
        "server_cpu_ms_per_request": max(s["server_cpu_ms_per_request"] for s in all_stats),
        "load_cpu_share_pct": max(s["cpu_share_pct"] for s in all_stats),
        "total_wall_no_load_s": round(statistics.fmean(r["total_wall_s"] for r in base), 2),
        "total_wall_load_s": round(statistics.fmean(r["total_wall_s"] for r in loaded), 2),
    }
    summary["wall_change_pct"] = round(100 * (summary["total_wall_load_s"] / summary["total_wall_no_load_s"] - 1), 2)
    summary["meets_p99_20ms"] = summary["p99_ms"] < 20
    summary["meets_wall_5pct"] = abs(summary["wall_change_pct"]) <= 5

    print(f"\nGET /jobs/{{id}} at {args.rate:g} req/s while a job trains (loopback, one keep-alive connection)")
    print(f"{'run':<12} {'requests':>8} {'rate':>7} {'p50 ms':>7} {'p90 ms':>7} {'p99 ms':>7} {'max ms':>7} {'late':>5} {'errors':>6} {'job wall s':>10} {'local s':>8}")
    for r in runs:
        s = r["load"] or {}
        print(
            f"{r['label']:<12} {s.get('requests', ''):>8} {s.get('achieved_rate', ''):>7} {s.get('p50_ms', ''):>7} {s.get('p90_ms', ''):>7} "
            f"{s.get('p99_ms', ''):>7} {s.get('max_ms', ''):>7} {s.get('late', ''):>5} {s.get('errors', ''):>6} {r['total_wall_s']:>10} {r['local_wall_s']:>8}"
        )
    print(
        f"\np50 {summary['p50_ms']} ms, p99 {summary['p99_ms']} ms (target < 20: {'yes' if summary['meets_p99_20ms'] else 'NO'}); "
        f"job wall {summary['total_wall_no_load_s']} s without load, {summary['total_wall_load_s']} s with "
        f"({summary['wall_change_pct']:+.1f} %, target within 5 %: {'yes' if summary['meets_wall_5pct'] else 'NO'})"
    )
    print(
        f"CPU of the load: server {summary['server_cpu_ms_per_request']} ms/request; server + client took "
        f"{summary['load_cpu_share_pct']} % of the machine's {os.cpu_count()} CPUs while the job trained "
        f"(the slowdown to expect for a CPU-bound job, whatever else runs on the machine)"
    )
    if args.json:
        Path(args.json).write_text(json.dumps({"summary": summary, "runs": runs}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
