"""The local Ray a run starts for itself (no ``--address``): up and down faster than with Ray's defaults.

Ray 2.60's ``ray.init`` spends seconds of a short run starting and waiting on processes an embedded,
dashboard-less Ray does not use, one of which also hangs ``ray.shutdown`` for a second. Each shortcut goes
through Ray's private API (ray is pinned in pyproject.toml) and falls back to Ray's own behaviour
if that API changes; tests/test_session.py notices when one stops applying.
"""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from typing import Any, Iterator

import ray

log = logging.getLogger(__name__)

NODE_POLL_S = 0.05  # how often the start asks the GCS whether the raylet has registered


def start(*, num_cpus: int | None, num_gpus: int | None, **kwargs: Any) -> None:
    """``ray.init`` of a new local Ray (``address="local"``: never a stray cluster left on this machine)."""
    with _without_processes("start_api_server", "start_monitor"), _prompt_node_wait():
        ray.init(address="local", num_cpus=num_cpus, num_gpus=num_gpus, include_dashboard=False, **kwargs)


@contextmanager
def _without_processes(*starts: str) -> Iterator[None]:
    """The head starts without the processes these methods of Ray's ``Node`` would start.

    - ``start_api_server``: with ``include_dashboard=False`` Ray still starts its API server (only
      the usage-stats module loaded: no dashboard, no state or jobs API) and waits, polling, until it
      has published its address, before it even starts the raylet: about a second. (So an embedded
      Ray sends no usage statistics: that module is what reports them.)
    - ``start_monitor``: the autoscaler monitor, with nothing to autoscale on one machine. It costs
      half a second of CPU while the workers start, and at ``ray.shutdown``, which stops the GCS
      first, its SIGTERM handler reports to the gone GCS and hangs until Ray kills it a second later
      (measured: 1.01 of the shutdown's 1.1 s).
    """
    try:
        from ray._private.node import Node

        originals = {name: getattr(Node, name) for name in starts}
    except Exception as err:  # noqa: BLE001 - an optimisation only
        log.debug("cannot start Ray without %s: %s", ", ".join(starts), err)
        yield
        return
    for name in starts:
        setattr(Node, name, _skip)
    try:
        yield
    finally:
        for name, original in originals.items():
            setattr(Node, name, original)


def _skip(self: Any, **_: Any) -> None:
    """A process the embedded Ray does without."""


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
