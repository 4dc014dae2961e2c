"""Running the service: ``ddray serve`` ends here."""

from __future__ import annotations

import logging
import sys

import uvicorn

from api.main import create_app, describe
from api.settings import ServiceSettings

log = logging.getLogger("ddray.api")


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
