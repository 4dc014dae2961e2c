"""The ``ddray`` command line: run, demo, predict, validate; ``serve`` (the REST job service) and its client commands.

``serve`` is the one command that reaches the service package ``api``, and only
inside its handler; the client commands (:mod:`ddray.client.commands`) talk HTTP.
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import signal
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from rich.console import Console

from ddray.client.commands import register as register_client_commands

EXIT_BAD_INPUT = 2


def _add_run_args(p: argparse.ArgumentParser, output_help: str = "default: runs/<config name>, or runs/<config name>-N if taken") -> None:
    p.add_argument("--output", "-o", help=f"output folder ({output_help})")
    p.add_argument("--address", help="Ray cluster to join, e.g. auto or ray://head:10001 (default: embedded local Ray)")
    p.add_argument("--num-cpus", type=int, default=None, help="CPUs of the embedded local Ray (default: all)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ddray", description="Domain-decomposition CNN-DNN training on Ray")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="train a job from a YAML config")
    p.add_argument("config", nargs="?", help="YAML config file (omit with --resume)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run in RUN_DIR with its saved config")
    p.add_argument(
        "--run-id",
        help="the run's id and its folder name under storage (1-64 of A-Z a-z 0-9 . _ -; "
        "default: <output folder name>-<UTC time>-<random hex>)",
    )
    _add_run_args(p)

    p = sub.add_parser("sweep", help="run every combination of a config's sweep: section on one Ray (docs/sweeps.md)")
    p.add_argument("config", help="YAML config with a sweep: section")
    p.add_argument(
        "--run-id",
        help="the sweep's id, its folder name under storage (default: <output folder name>-<UTC time>-<random hex>)",
    )
    _add_run_args(p, "default: sweeps/<config name>; the same folder again continues the sweep, skipping finished runs")

    p = sub.add_parser("demo", help="digits, 2x2 subdomains with overlap, on the embedded local Ray")
    _add_run_args(p)

    p = sub.add_parser("predict", help="classify new inputs (npz, image file or folder) with a finished run")
    p.add_argument("run_dir")
    p.add_argument("images")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")

    p = sub.add_parser("validate", help="check a config file without running it")
    p.add_argument("config")

    _add_suggest_parser(sub)
    _add_serve_parser(sub)
    register_client_commands(sub)
    return parser


def _add_suggest_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("suggest", help="inspect the data, time candidate local models, print a complete runnable config")
    p.add_argument("config", help="YAML config with at least a dataset: section")
    p.add_argument("--gpus", type=float, default=0.0, help="GPUs the run may use (default 0)")
    p.add_argument("--cpus", type=int, default=None, help="CPUs the run may use (default: all of this machine)")
    p.add_argument("--hours", type=float, default=None, help="time budget: epochs are chosen to fit it")
    p.add_argument("--output", "-o", help="also write the config to this file")
    p.set_defaults(handler=_suggest)


def _suggest(args: argparse.Namespace, console: Console) -> int:
    from ddray.config import read_config_file
    from ddray.suggest import suggest

    raw = read_config_file(args.config)
    with console.status("timing candidate local models ..."):
        result = suggest(raw, cpus=args.cpus, gpus=args.gpus, hours=args.hours)
    if args.output:
        Path(args.output).write_text(result.text)
        console.print(f"[bold]ddray[/]: suggested config written to {args.output} (predicted wall {result.predicted_wall_s:.0f} s)")
    print(result.text, end="")
    return 0


def _add_serve_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="start the REST job service")
    p.add_argument("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--token", help="bearer token (prefer the DDRAY_API_TOKEN environment variable)")
    p.add_argument("--dev", action="store_true", default=None, help="development: make a random token if none is set")
    p.add_argument("--data-roots", help="colon-separated folders or URI prefixes configs may read data from (DDRAY_DATA_ROOTS)")
    p.add_argument("--storage", help="default storage of jobs, a shared folder or URI such as s3://bucket/ddray-runs (DDRAY_STORAGE)")
    p.add_argument("--storage-roots", help="colon-separated further prefixes a job's own storage: may use (DDRAY_STORAGE_ROOTS)")
    p.add_argument("--state-dir", help="job folders and the default SQLite database (DDRAY_STATE_DIR)")
    p.add_argument("--database-url", help="SQLAlchemy URL (DDRAY_DATABASE_URL; default sqlite in the state dir)")
    p.add_argument(
        "--ray-address",
        help="Ray cluster to run jobs on as Ray jobs: auto, host:port (GCS) or http://host:8265 (DDRAY_RAY_ADDRESS; "
        "default: a local head started by the service)",
    )
    p.add_argument("--ray-num-cpus", type=int, help="CPUs of the local head (default: all)")
    p.add_argument("--ray-object-store-mb", type=int, help="object store of the local head in MiB")
    p.add_argument("--max-concurrent-jobs", type=int, help="jobs running at once (default 1; 0 = only queue)")
    p.add_argument("--max-body-bytes", type=int)
    p.add_argument("--max-upload-bytes", type=int)
    p.add_argument("--access-log", action="store_true", help="log every request")


def fresh_output(base: Path) -> Path:
    """The default output folder: ``base``, or ``base-2``, ``base-3``... so a rerun never collides."""
    candidate, n = base, 1
    while (candidate / "config.yaml").exists():
        n += 1
        candidate = base.with_name(f"{base.name}-{n}")
    return candidate


def _run(args: argparse.Namespace, console: Console) -> int:
    from ddray.config import load_config

    if args.resume:
        from ddray.run_dir import RunDir

        config = RunDir(Path(args.resume)).read_config()
        output = Path(args.resume)
    elif args.config:
        config = load_config(args.config)
        output = Path(args.output) if args.output else fresh_output(Path("runs") / Path(args.config).stem)
    else:
        console.print("[red]error[/]: give a CONFIG file or --resume RUN_DIR")
        return EXIT_BAD_INPUT
    if config.sweep:
        console.print(f"[red]error[/]: {args.config} has a sweep: section; run it with ddray sweep {args.config} --output DIR")
        return EXIT_BAD_INPUT
    with _early_ray(args) as run:
        run(config, output, args.run_id, address=args.address, resume=bool(args.resume), num_cpus=args.num_cpus)
    return 0


@contextmanager
def _early_ray(args: argparse.Namespace) -> Iterator[Any]:
    """The config is valid: Ray starts now, while this process imports torch and the driver
    (seconds each, spent mostly apart from each other); the driver's session continues the start.
    Yields the driver's ``run``."""
    from ddray.orchestration.session import discard_early, start_early

    start_early(args.address, num_cpus=args.num_cpus)
    try:
        from ddray.orchestration.driver import run

        yield run
    finally:
        discard_early()  # a run that failed before it reached Ray leaves no Ray running


def _sweep(args: argparse.Namespace, console: Console) -> int:
    from ddray.config import load_config
    from ddray.orchestration.sweep import run_sweep

    config = load_config(args.config)
    if not config.sweep:
        console.print(f"[red]error[/]: {args.config} has no sweep: section (e.g. sweep: {{seed: [0, 1, 2]}}); run it with ddray run")
        return EXIT_BAD_INPUT
    # the same folder again resumes the sweep: finished runs are skipped
    output = Path(args.output) if args.output else Path("sweeps") / Path(args.config).stem
    run_sweep(config, output, args.run_id, address=args.address, num_cpus=args.num_cpus)
    return 0


def _demo(args: argparse.Namespace, console: Console) -> int:
    from ddray.presets import demo_config

    output = Path(args.output) if args.output else fresh_output(Path("runs") / "demo")
    with _early_ray(args) as run:
        run(demo_config(), output, address=args.address, num_cpus=args.num_cpus)
    return 0


def _predict(args: argparse.Namespace, console: Console) -> int:
    from rich.table import Table

    from ddray.predict import TrainedRun

    preds = TrainedRun(args.run_dir).predict_path(args.images, warn=False)
    for message in preds.warnings:  # on stderr, so --json output stays parseable
        console.print(f"[yellow]warning[/]: {message}", highlight=False, soft_wrap=True)
    rows = preds.records()
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    table = Table(title=f"predictions of {args.run_dir}")
    for col in rows[0] if rows else ["input"]:
        table.add_column(col)
    for row in rows:
        table.add_row(*(str(v) for v in row.values()))
    Console().print(table)
    return 0


def _validate(args: argparse.Namespace, console: Console) -> int:
    from ddray.config import load_config

    config = load_config(args.config)
    console.print(f"{args.config}: valid ({config.decomposition.num_subdomains} subdomains, model {config.local_model.name})")
    return 0


def _serve(args: argparse.Namespace, console: Console) -> int:
    from api.server import serve_cli  # the service, imported only when it is started

    return serve_cli(args, console)


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


HANDLERS = {"run": _run, "sweep": _sweep, "demo": _demo, "predict": _predict, "validate": _validate, "serve": _serve}


def main(argv: list[str] | None = None) -> int:
    from ddray.errors import USER_ERRORS, JobFailed

    args = build_parser().parse_args(argv)
    console = Console(stderr=True)
    if args.command in ("run", "sweep", "demo"):
        signal.signal(signal.SIGTERM, _interrupt)  # a stopped job ends like Ctrl-C: cleanly, resumable
    handler = HANDLERS.get(args.command) or args.handler
    try:
        return handler(args, console)
    except USER_ERRORS as err:
        console.print(f"[red]error[/]: {err}", highlight=False)
        return EXIT_BAD_INPUT
    except JobFailed as err:
        console.print(f"[red]failed[/]: {err}", highlight=False)
        return 1
    except KeyboardInterrupt:
        if args.command == "sweep":
            console.print("[yellow]interrupted[/]: finished runs are kept; continue with the same ddray sweep command (same --output)")
        else:
            console.print("[yellow]interrupted[/]: finished subdomains are kept; continue with ddray run --resume RUN_DIR")
        return 130


def entry() -> None:
    """The ``ddray`` command (and ``python -m ddray``): :func:`main`, then an exit without Python's teardown.

    After a run the interpreter spends 1-2 s tearing down torch's, Ray's and pyarrow's modules
    (measured on a 2-core machine: 1.7 s of a 27 s ``ddray run``). By then every file ddray wrote is
    closed, so the exit handlers run (logging, MLflow, Ray) and the process ends at once. An
    exception that escapes ``main`` still ends the normal way, with its traceback.
    """
    code = main()
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    entry()
