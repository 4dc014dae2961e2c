"""Connecting the driver to Ray: join a cluster or start an embedded one, in the background if asked."""

from __future__ import annotations

import logging
import os
import signal
import threading
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import ray

from ddray.orchestration import embedded_ray

log = logging.getLogger(__name__)


class _Start:
    """Ray's start in a thread of its own that stays alive while the session lasts.

    Ray binds the GCS and raylet it starts to their creator with PR_SET_PDEATHSIG, which
    Linux fires when that *thread* ends: so the thread waits until the session closes.
    """

    def __init__(self, address: str | None, num_cpus: int | None, num_gpus: int | None):
        self.key = (address, num_cpus, num_gpus)
        self.owned = not ray.is_initialized()
        self.error: BaseException | None = None
        self.ready, self._done = threading.Event(), threading.Event()
        self._closing = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="ddray-ray-session", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            if self.owned:
                _init(*self.key)
        except BaseException as err:  # noqa: BLE001 - handed to the session's wait()
            self.error = err
        finally:
            self.ready.set()
        self._done.wait()

    def close(self) -> None:
        """Shut down the Ray this start began (a second call waits for the first one to finish)."""
        self.ready.wait()
        with self._closing:
            try:
                if self.owned and ray.is_initialized():
                    ray.shutdown()
            finally:
                self._done.set()
                self._thread.join()


_early: list[_Start] = []


def start_early(address: str | None = None, *, num_cpus: int | None = None, num_gpus: int | None = None) -> None:
    """Begin Ray's start now, before the caller's heavy imports (torch): the next :func:`ray_session`
    with the same arguments continues it instead of starting Ray then. Ray's start is mostly
    waiting on processes it spawns, so it overlaps the imports well."""
    if not _early and not ray.is_initialized():
        _early.append(_Start(address, num_cpus, num_gpus))


def discard_early() -> None:
    """Stop an early start no session took (the run failed before it reached Ray)."""
    while _early:
        _early.pop().close()


class Session:
    """What :func:`ray_session` yields: call it to wait until Ray is up; :meth:`release` when done with Ray."""

    def __init__(self, start: _Start, wait: Callable[[], Any]):
        self._start, self._wait = start, wait

    def __call__(self) -> Any:
        return self._wait()

    def release(self) -> None:
        """The caller needs Ray no more: an embedded Ray this session started shuts down now, in the
        background (its processes take a second or two to exit), while the caller goes on without Ray;
        the session's end waits for it. A Ray that was already up is left alone, as at the session's end."""
        threading.Thread(target=self._start.close, name="ddray-ray-release", daemon=True).start()


@contextmanager
def ray_session(
    address: str | None = None,
    *,
    num_cpus: int | None = None,
    num_gpus: int | None = None,
    then: Callable[[], Any] | None = None,
) -> Iterator[Session]:
    """Join ``address`` or start an embedded local Ray; reuse (and keep) one that is already up.

    The start (and ``then``) runs in a thread while the caller goes on, e.g. loading its data:
    ``ray.init`` takes seconds that need not be spent in sequence. Yields a :class:`Session`, which
    the caller calls from the main thread: it returns once Ray is up, with what ``then()`` returned
    (None without ``then``), and puts the caller's SIGTERM handler back. A failed ``then`` is not
    an error (it returns None; the caller checks again); a failed start is raised by the call.
    """
    previous_sigterm = signal.getsignal(signal.SIGTERM)
    start = _early.pop() if _early else None
    if start is not None and start.key != (address, num_cpus, num_gpus):
        start.close()  # started for other arguments: not this session's Ray
        start = None
    start = start or _Start(address, num_cpus, num_gpus)
    outcome: dict[str, Any] = {}

    def after_start() -> None:
        start.ready.wait()
        if start.error is None and then is not None:
            try:
                outcome["value"] = then()
            except Exception as err:  # noqa: BLE001 - an optimisation only
                log.debug("ahead-of-time step after the Ray start failed: %s", err)

    follow = threading.Thread(target=after_start, name="ddray-after-ray-start", daemon=True)
    follow.start()

    def wait() -> Any:
        follow.join()
        _restore_sigterm(previous_sigterm)
        if start.error is not None:
            raise start.error
        return outcome.get("value")

    try:
        yield Session(start, wait)
    finally:
        follow.join()
        start.close()


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
        embedded_ray.start(num_cpus=num_cpus, num_gpus=num_gpus, **kwargs)
