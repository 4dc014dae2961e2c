"""Connecting the driver to Ray: join a cluster or start an embedded one, in the background if asked."""

from __future__ import annotations

import logging
import os
import signal
import threading
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import ray

log = logging.getLogger(__name__)


@contextmanager
def ray_session(
    address: str | None = None,
    *,
    num_cpus: int | None = None,
    num_gpus: int | None = None,
    then: Callable[[], Any] | None = None,
) -> Iterator[Callable[[], Any]]:
    """Join ``address`` or start an embedded local Ray; reuse (and keep) one that is already up.

    The start (and ``then``) runs in a thread while the caller goes on, e.g. loading its data:
    ``ray.init`` takes seconds that need not be spent in sequence. Yields ``wait()``, which the
    caller calls from the main thread: it returns once Ray is up, with what ``then()`` returned
    (None without ``then``), and puts the caller's SIGTERM handler back. A failed ``then`` is not
    an error (it returns None; the caller checks again); a failed start is raised by ``wait()``.
    """
    owned = not ray.is_initialized()
    outcome: dict[str, Any] = {}
    previous_sigterm = signal.getsignal(signal.SIGTERM)
    ready, done = threading.Event(), threading.Event()

    def start() -> None:
        try:
            if owned:
                _init(address, num_cpus, num_gpus)
        except BaseException as err:  # noqa: BLE001 - handed to wait()
            outcome["error"] = err
        else:
            if then is not None:
                try:
                    outcome["value"] = then()
                except Exception as err:  # noqa: BLE001 - an optimisation only
                    log.debug("ahead-of-time step after the Ray start failed: %s", err)
        finally:
            ready.set()

    def run_and_stay() -> None:
        # The thread that starts Ray must outlive the session: Ray binds the GCS and raylet it starts
        # to their creator with PR_SET_PDEATHSIG, which Linux fires when that *thread* ends.
        start()
        done.wait()

    thread = threading.Thread(target=run_and_stay, name="ddray-ray-session", daemon=True)
    thread.start()

    def wait() -> Any:
        ready.wait()
        _restore_sigterm(previous_sigterm)
        if "error" in outcome:
            raise outcome["error"]
        return outcome.get("value")

    try:
        yield wait
    finally:
        ready.wait()
        try:
            if owned and ray.is_initialized():
                ray.shutdown()
        finally:
            done.set()
            thread.join()


def _restore_sigterm(handler: Any) -> None:
    """Put the caller's SIGTERM handler back (main thread only): after ``ray.init`` the core worker's
    C-level failure handler owns SIGTERM; it logs and then aborts the process at exit instead of
    letting ddray stop cleanly."""
    if callable(handler) and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, handler)


def _init(address: str | None, num_cpus: int | None, num_gpus: int | None) -> None:
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    kwargs: dict = {"logging_level": logging.WARNING, "log_to_driver": True}
    if address:
        ray.init(address=address, **kwargs)
    else:
        # address="local": always a new embedded Ray, never a stray cluster left on this machine
        ray.init(address="local", num_cpus=num_cpus, num_gpus=num_gpus, include_dashboard=False, **kwargs)
