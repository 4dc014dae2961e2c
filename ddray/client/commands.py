"""The client commands of the job service: ``submit``, ``status``, ``cancel``, ``results``, ``logs``, ``download``.

They talk HTTP to a running ``ddray serve`` (through :mod:`ddray.client.http`) and
never import the service itself. They read the service URL and token from
``--url``/``--token`` or ``DDRAY_URL``/``DDRAY_API_TOKEN``.
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

FINAL = ("succeeded", "failed", "cancelled")
EXIT_FAILED = 1
EXIT_BAD_INPUT = 2


def register(sub: argparse._SubParsersAction) -> None:
    def client_args(q: argparse.ArgumentParser) -> None:
        q.add_argument("--url", help="service URL (DDRAY_URL, default http://127.0.0.1:8000)")
        q.add_argument("--token", help="bearer token (DDRAY_API_TOKEN)")

    p = sub.add_parser("submit", help="submit a YAML config to the job service")
    p.add_argument("config")
    p.add_argument("--name")
    p.add_argument("--wait", action="store_true", help="wait until the job ends; exit 0 only if it succeeded")
    client_args(p)
    p.set_defaults(handler=_submit)

    p = sub.add_parser("status", help="list jobs, or show one job's progress")
    p.add_argument("id", nargs="?")
    p.add_argument("--status", dest="filter_status", choices=["queued", "running", "succeeded", "failed", "cancelled"])
    p.add_argument("--limit", type=int, default=20)
    p.add_argument("--json", action="store_true")
    client_args(p)
    p.set_defaults(handler=_status)

    p = sub.add_parser("cancel", help="cancel a queued or running job")
    p.add_argument("id")
    client_args(p)
    p.set_defaults(handler=_cancel)

    p = sub.add_parser("results", help="a finished job's results")
    p.add_argument("id")
    p.add_argument("--json", action="store_true")
    client_args(p)
    p.set_defaults(handler=_results)

    p = sub.add_parser("logs", help="a job's log")
    p.add_argument("id")
    p.add_argument("--lines", type=int)
    client_args(p)
    p.set_defaults(handler=_logs)

    p = sub.add_parser("download", help="fetch a whole run: a job's files through the service, or a storage prefix directly")
    p.add_argument("source", help="a job id, or a run's storage location (s3://bucket/ddray-runs/<job id>, a folder)")
    p.add_argument("dest", help="folder to write the run into (created; existing files are kept)")
    client_args(p)
    p.set_defaults(handler=_download)


# -- client commands -----------------------------------------------------------
def _client(args: argparse.Namespace):
    from ddray.client.http import ServiceClient

    return ServiceClient(args.url, args.token)


def _guard(fn):
    def wrapper(args: argparse.Namespace, console: Console) -> int:
        from ddray.client.http import ClientError

        try:
            return fn(args, console)
        except ClientError as err:
            console.print(f"[red]error[/]: {err}", highlight=False)
            return EXIT_BAD_INPUT if str(err).startswith("rejected") else EXIT_FAILED

    return wrapper


def _when(value: str | None) -> str:
    if not value:
        return ""
    return datetime.fromisoformat(value).astimezone().strftime("%Y-%m-%d %H:%M:%S")


@_guard
def _submit(args: argparse.Namespace, console: Console) -> int:
    import yaml

    path = Path(args.config)
    if not path.is_file():
        console.print(f"[red]error[/]: config file not found: {path}")
        return EXIT_BAD_INPUT
    try:
        config = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        console.print(f"[red]error[/]: {path} is not valid YAML: {err}", highlight=False)
        return EXIT_BAD_INPUT
    with _client(args) as client:
        job = client.submit(config, name=args.name or path.stem)
        print(job["id"], flush=True)
        console.print(f"submitted job {job['id']} ({job['status']}); watch it with: ddray status {job['id']}", highlight=False)
        if not args.wait:
            return 0
        last = None
        while True:
            info = client.get(job["id"])
            line = _progress_line(info)
            if line != last:
                console.print(line, highlight=False)
                last = line
            if info["status"] in FINAL:
                if info.get("error"):
                    console.print(f"[red]error[/]: {info['error']}", highlight=False)
                return 0 if info["status"] == "succeeded" else EXIT_FAILED
            time.sleep(2)


def _progress_line(info: dict[str, Any]) -> str:
    subs = info.get("subdomains") or []
    epochs = [s.get("epoch") or 0 for s in subs]
    detail = f", epochs {min(epochs)}-{max(epochs)}" if epochs and any(epochs) else ""
    line = f"{info['id']}: {info['status']}" + (f" ({info['phase']}{detail})" if info.get("phase") else "")
    streamed = _global_accuracy(info, len(subs))
    return line + (f"; {streamed}" if streamed else "")


def _global_accuracy(info: dict[str, Any], subdomains: int) -> str:
    """The streamed global answer of a job view (aggregation.streaming), as one phrase; '' without one."""
    g = info.get("global_accuracy") or {}
    if g.get("test_accuracy") is None:
        return ""
    val = f", val {g['validation_accuracy']:.4f}" if isinstance(g.get("validation_accuracy"), (int, float)) else ""
    return f"global accuracy {g['test_accuracy']:.4f}{val} (DNN on {g.get('subdomains_done')}/{subdomains or '?'} subdomains)"


@_guard
def _status(args: argparse.Namespace, console: Console) -> int:
    with _client(args) as client:
        if args.id:
            info = client.get(args.id)
            if args.json:
                print(json.dumps(info, indent=1))
                return 0
            _print_job(info)
            return 0
        listing = client.list(status=args.filter_status, limit=args.limit)
    if args.json:
        print(json.dumps(listing, indent=1))
        return 0
    table = Table(title=f"ddray jobs ({listing['total']} in all)")
    for col in ("id", "name", "status", "created", "finished", "error"):
        table.add_column(col)
    for job in listing["items"]:
        table.add_row(job["id"], job.get("name") or "", job["status"], _when(job["created_at"]), _when(job.get("finished_at")), (job.get("error") or "")[:60])
    Console().print(table)
    return 0


def _print_job(info: dict[str, Any]) -> None:
    out = Console()
    out.print(f"[bold]{info['id']}[/] {info.get('name') or ''}: [bold]{info['status']}[/]" + (f", phase {info['phase']}" if info.get("phase") else ""), highlight=False)
    t = info.get("timings") or {}
    if t.get("run_s") is not None:
        out.print(f"queued {t.get('queued_s', 0):.1f}s, running {t['run_s']:.1f}s", highlight=False)
    if info.get("ray_job"):
        out.print(f"Ray job {info['ray_job']}; run at {info.get('run_location') or '?'}", highlight=False)
    if info.get("error"):
        out.print(f"[red]error[/]: {info['error']}", highlight=False)
    streamed = _global_accuracy(info, len(info.get("subdomains") or []))
    if streamed:
        out.print(streamed[0].upper() + streamed[1:], highlight=False)
    accuracies = ((info.get("results") or {}).get("aggregation")) or {}
    if accuracies:
        out.print("test accuracy: " + ", ".join(f"{m} {v:.4f}" for m, v in accuracies.items() if isinstance(v, (int, float))), highlight=False)
    subs = info.get("subdomains") or []
    if subs:
        table = Table(title="subdomains")
        for col in ("#", "status", "epoch", "train loss", "val acc", "best val acc", "trials"):
            table.add_column(col, justify="right")

        def f(v: Any) -> str:
            return f"{v:.4f}" if isinstance(v, float) else ("" if v is None else str(v))

        for s in subs:
            epoch = f"{s.get('epoch') or 0}/{s.get('epochs') or '?'}" if s.get("epochs") else ""
            table.add_row(str(s["index"]), s.get("status") or "", epoch, f(s.get("train_loss")), f(s.get("val_accuracy")), f(s.get("best_val_accuracy")), f(s.get("trials_done")))
        out.print(table)


@_guard
def _cancel(args: argparse.Namespace, console: Console) -> int:
    with _client(args) as client:
        job = client.cancel(args.id)
    console.print(f"job {job['id']}: {job['status']}" + (" (stopping)" if job["status"] == "running" else ""), highlight=False)
    return 0


@_guard
def _results(args: argparse.Namespace, console: Console) -> int:
    with _client(args) as client:
        results = client.results(args.id)
    if args.json:
        print(json.dumps(results, indent=1))
        return 0
    if results.get("kind") == "sweep":  # a sweep job's results are its table
        from ddray.sweep import print_table as print_sweep

        print_sweep(results.get("table") or [], Console())
        return 0
    from ddray.report import print_table

    print_table(results, Console())
    return 0


@_guard
def _logs(args: argparse.Namespace, console: Console) -> int:
    with _client(args) as client:
        print(client.logs(args.id, args.lines), end="")
    return 0


def _download(args: argparse.Namespace, console: Console) -> int:
    """A storage location is copied directly (works after `ray down`); a job id goes through the service."""
    dest = Path(args.dest)
    if "://" in args.source or Path(args.source).is_dir():
        from ddray.storage import download_tree

        try:
            count = download_tree(args.source, dest)
        except (OSError, ValueError) as err:
            console.print(f"[red]error[/]: cannot read {args.source}: {err}", highlight=False)
            return EXIT_FAILED
        if count == 0:
            console.print(f"[red]error[/]: nothing under {args.source}: is it a run's storage prefix (<storage>/<run id>)?", highlight=False)
            return EXIT_BAD_INPUT
        console.print(f"{count} files from {args.source} in {dest}", highlight=False)
        return 0
    return _download_job(args, console)


@_guard
def _download_job(args: argparse.Namespace, console: Console) -> int:
    from rich.progress import Progress

    dest = Path(args.dest)
    with _client(args) as client:
        listing = client.artifacts(args.source)
        names = listing["files"]
        if not names:
            console.print(f"[red]error[/]: job {args.source} has no files yet", highlight=False)
            return EXIT_FAILED
        with Progress(console=console, transient=True) as progress:
            task = progress.add_task(f"job {args.source}", total=len(names))
            for name in names:
                target = dest.joinpath(*name.split("/"))
                target.parent.mkdir(parents=True, exist_ok=True)
                client.download_artifact(args.source, name, target)
                progress.advance(task)
    console.print(f"{len(names)} files of job {args.source} (from {listing['location']}) in {dest}", highlight=False)
    return 0
