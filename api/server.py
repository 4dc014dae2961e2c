"""Running the service: ``ddray serve`` ends here."""

from __future__ import annotations

import argparse
import logging
import sys

import uvicorn
from pydantic import ValidationError
from rich.console import Console

from api.main import create_app, describe
from api.settings import ServiceSettings

log = logging.getLogger("ddray.api")

EXIT_BAD_INPUT = 2


def serve_cli(args: argparse.Namespace, console: Console) -> int:
    """``ddray serve``: settings from the command line's flags over the environment, then serve."""
    flags = {
        "api_token": args.token,
        "dev": args.dev,
        "data_roots": args.data_roots,
        "storage": args.storage,
        "storage_roots": args.storage_roots,
        "state_dir": args.state_dir,
        "database_url": args.database_url,
        "ray_address": args.ray_address,
        "ray_num_cpus": args.ray_num_cpus,
        "ray_object_store_mb": args.ray_object_store_mb,
        "max_concurrent_jobs": args.max_concurrent_jobs,
        "max_body_bytes": args.max_body_bytes,
        "max_upload_bytes": args.max_upload_bytes,
    }
    try:
        settings = ServiceSettings(**{k: v for k, v in flags.items() if v is not None})
    except ValidationError as err:
        for e in err.errors():
            field = ".".join(str(p) for p in e["loc"]) or "settings"
            console.print(f"[red]error[/]: {field}: {e['msg'].removeprefix('Value error, ')}", highlight=False)
        return EXIT_BAD_INPUT
    if settings.dev and not args.token:
        console.print(f"[yellow]development token[/]: {settings.token}", highlight=False)
    if not settings.data_roots:
        console.print("[yellow]note[/]: no data roots (DDRAY_DATA_ROOTS): only configs without data paths are accepted")
    serve(args.host, args.port, settings, access_log=args.access_log)
    return 0


def serve(host: str, port: int, settings: ServiceSettings, *, access_log: bool = False) -> None:
    """Blocking: serve until SIGINT/SIGTERM, then stop running jobs and the local Ray head."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    app = create_app(settings)
    log.info("ddray service on http://%s:%d %s", host, port, describe(settings))
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        access_log=access_log,
        log_level="info",
        timeout_graceful_shutdown=5,
        proxy_headers=False,
        server_header=False,
    )
    uvicorn.Server(config).run()
