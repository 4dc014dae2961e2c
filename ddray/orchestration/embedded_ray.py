"""The local Ray a run starts for itself (no ``--address``): started and stopped faster than Ray's defaults.

Ray 2.60's ``ray.init`` spends seconds of a short run waiting on things an embedded, dashboard-less
Ray does not use, and ``ray.shutdown`` a second on a process that hangs. Each shortcut below goes
through Ray's private API (ray is pinned in pyproject.toml) and falls back to Ray's own behaviour
if that API changes; tests/test_session.py notices when one stops applying.
"""

from __future__ import annotations

import logging
import time
from contextlib import ExitStack, contextmanager
from typing import Any, Iterator

import ray

log = logging.getLogger(__name__)

NODE_POLL_S = 0.05  # how often the start asks the GCS whether the raylet has registered


def start(*, num_cpus: int | None, num_gpus: int | None, **kwargs: Any) -> None:
    """``ray.init`` of a new local Ray (``address="local"``: never a stray cluster left on this machine)."""
    with ExitStack() as stack:
        for shortcut in (_without_api_server, _prompt_node_wait):
            stack.enter_context(shortcut())
        ray.init(address="local", num_cpus=num_cpus, num_gpus=num_gpus, include_dashboard=False, **kwargs)


def stop() -> None:
    """``ray.shutdown`` of the Ray :func:`start` began, its autoscaler monitor first."""
    _stop_autoscaler_monitor()
    ray.shutdown()


@contextmanager
def _without_api_server() -> Iterator[None]:
    """No API server: about a second less of ``ray.init``.

    With ``include_dashboard=False`` Ray still starts its API server process (only the usage-stats
    module loaded: no dashboard, no state or jobs API) and waits, polling, until it has published
    its address, before it even starts the raylet. The embedded Ray uses none of it.
    """
    try:
        from ray._private.node import Node

        original = Node.start_api_server
    except Exception as err:  # noqa: BLE001 - an optimisation only
        log.debug("cannot skip Ray's API server: %s", err)
        yield
        return

    def start_api_server(self: Any, *, include_dashboard: bool | None, raise_on_failure: bool) -> None:
        if include_dashboard:
            original(self, include_dashboard=include_dashboard, raise_on_failure=raise_on_failure)

    Node.start_api_server = start_api_server
    try:
        yield
    finally:
        Node.start_api_server = original


@contextmanager
def _prompt_node_wait() -> Iterator[None]:
    """The start notices the raylet's registration within ``NODE_POLL_S``, not within a second.

    ``ray.init`` waits for its raylet with Ray's ``get_node``, which asks the GCS once and, if the
    raylet has not registered yet (it never has: it first waits for its agents), sleeps a whole
    second before asking again: half a second lost on average. Asking the GCS's node table more
    often first makes that call find the node at once.
    """
    try:
        from ray._private import services
        from ray._private.state import GlobalState

        original = services.get_node
        client_options = services._get_gcs_client_options
    except Exception as err:  # noqa: BLE001 - an optimisation only
        log.debug("cannot poll for the raylet's registration: %s", err)
        yield
        return

    def get_node(gcs_address: str, node_id: str) -> Any:
        try:
            state = GlobalState()
            state._initialize_global_state(client_options(gcs_address))
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and not any(n.get("NodeID") == node_id and n.get("Alive") for n in state.node_table()):
                time.sleep(NODE_POLL_S)
        except Exception as err:  # noqa: BLE001 - Ray's own call below waits as before
            log.debug("polling for the raylet's registration failed: %s", err)
        return original(gcs_address, node_id)

    services.get_node = get_node
    try:
        yield
    finally:
        services.get_node = original


def _stop_autoscaler_monitor() -> None:
    """Kill the autoscaler monitor before ``ray.shutdown``, which saves a second per run.

    ``ray.shutdown`` stops the GCS before the monitor; the monitor's SIGTERM handler then reports
    to the gone GCS and hangs until Ray kills it one second later (measured on Ray 2.60: 1.01 of
    the shutdown's 1.1 s). A local Ray has nothing to autoscale, so the monitor goes first, at once.
    """
    try:
        from ray._private import ray_constants
        from ray._private.worker import _global_node

        for info in _global_node.all_processes.get(ray_constants.PROCESS_TYPE_MONITOR, []):
            info.process.kill()
            info.process.wait(timeout=5)
    except Exception as err:  # noqa: BLE001 - an optimisation only
        log.debug("could not stop the autoscaler monitor before the shutdown: %s", err)
