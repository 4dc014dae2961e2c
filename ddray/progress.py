"""Live progress of a run: shown to the user and mirrored to ``progress.json``.

Workers send small event dicts; the driver feeds them to one ``ProgressTracker``
that renders them (rich bars on a terminal, one line per event in logs) and
keeps a snapshot file the REST service reads to report per-subdomain progress.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from ddray.storage import write_json

PHASES = ("loading", "local_training", "search", "aggregation", "baselines", "done", "failed", "cancelled")


class ProgressTracker:
    """Collects events ``{"subdomain": i, "epoch": e, "epochs": E, ...}`` and phase changes."""

    def __init__(self, path: str | Path | None, num_subdomains: int, console: Console | None = None, min_interval_s: float = 0.5):
        self.path = Path(path) if path else None
        self.console = console or Console(stderr=True)
        self.live = self.console.is_terminal and not os.environ.get("DDRAY_PLAIN_PROGRESS")
        self.min_interval_s = min_interval_s
        self._last_write = 0.0
        self.state: dict[str, Any] = {
            "phase": "loading",
            "started": time.time(),
            "updated": time.time(),
            "subdomains": {str(i): {"status": "pending"} for i in range(num_subdomains)},
            "phases": {},
        }
        self._bars: Progress | None = None
        self._tasks: dict[str, int] = {}
        self._lock = threading.RLock()  # the coarse level's background thread reports too (global_accuracy)

    # -- phases ---------------------------------------------------------
    def phase(self, name: str, **info: Any) -> None:
        if name not in PHASES:
            raise ValueError(f"unknown phase {name}")
        with self._lock:
            self._phase(name, info)

    def _phase(self, name: str, info: dict[str, Any]) -> None:
        self.state["phase"] = name
        self.state["phases"][name] = {"started": time.time(), **info}
        if name in ("local_training", "search"):
            self._start_bars()
        else:
            self._stop_bars()
        if name not in ("done", "loading", "cancelled"):
            self.console.print(f"[bold]ddray[/]: {name.replace('_', ' ')}" + (f" ({info})" if info else ""))
        self._write(force=True)

    # -- events from workers -------------------------------------------
    def update(self, event: dict[str, Any]) -> None:
        with self._lock:
            self._update(event)

    def global_accuracy(self, entry: dict[str, Any]) -> None:
        """A streamed global answer (``aggregation.stream`` entry): ``progress.json["global"]`` and one console line."""
        with self._lock:
            self.state["global"] = {**entry, "updated": time.time()}
            self.state["global"].pop("subdomains", None)
            self.state["updated"] = time.time()
            done, total = entry["subdomains_done"], len(self.state["subdomains"])
            basis = f"all {total} subdomains" if done >= total else f"{done}/{total} subdomains, the others at the class prior"
            self.console.print(
                f"  global accuracy (DNN on {basis}): test {_pct(entry.get('test_accuracy'))}, "
                f"val {_pct(entry.get('validation_accuracy'))} at {entry['seconds']:.1f}s",
                highlight=False,
            )
            self._write(force=True)

    def _update(self, event: dict[str, Any]) -> None:
        key = str(event["subdomain"])
        entry = self.state["subdomains"].setdefault(key, {})
        entry.update({k: v for k, v in event.items() if k != "subdomain"})
        acc = event.get("val_accuracy")
        if acc is not None and acc == acc and acc > entry.get("best_val_accuracy", -1.0):
            entry["best_val_accuracy"] = acc
        self.state["updated"] = time.time()
        self._render(key, entry, event)
        # a subdomain's first epoch is written at once too: it is when a job is seen to train
        first_epoch = event.get("status") == "running" and event.get("epoch") == 1
        self._write(force=first_epoch or event.get("status") in ("done", "failed", "restored", "retrying"))

    def _render(self, key: str, entry: dict, event: dict) -> None:
        epoch, epochs = entry.get("epoch", 0), entry.get("epochs", 0)
        loss, acc = entry.get("train_loss"), entry.get("val_accuracy")
        detail = f"loss {loss:.3f} val_acc {acc:.3f}" if loss is not None and acc is not None else entry.get("status", "")
        trial = f" trial {event['trial']}" if "trial" in event else ""
        if self._bars is not None:
            if key not in self._tasks:
                self._tasks[key] = self._bars.add_task(f"subdomain {key}", total=epochs or None, detail="")
            self._bars.update(self._tasks[key], completed=epoch, total=epochs or None, detail=detail + trial)
        elif "epoch" in event or event.get("status") in ("done", "failed", "restored", "retrying"):
            status = event.get("status", "")
            if status == "retrying":
                status = f"worker lost, retry {event.get('attempt')} from the last checkpoint ({event.get('cause', '')})"
            self.console.print(f"  subdomain {key}{trial}: epoch {epoch}/{epochs} {detail} {status}".rstrip(), highlight=False)

    def _start_bars(self) -> None:
        if self.live and self._bars is None:
            self._bars = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[detail]}"),
                TimeElapsedColumn(),
                console=self.console,
            )
            self._bars.start()

    def _stop_bars(self) -> None:
        if self._bars is not None:
            self._bars.stop()
            self._bars = None
            self._tasks.clear()

    # -- snapshot file ----------------------------------------------------
    def _write(self, force: bool = False) -> None:
        if self.path is None:
            return
        now = time.time()
        if not force and now - self._last_write < self.min_interval_s:
            return
        self._last_write = now
        write_json(self.path, self.state)

    def close(self, phase: str = "done", error: str | None = None) -> None:
        with self._lock:
            self._stop_bars()
            if error:
                self.state["error"] = error
            self.phase(phase)
        sys.stderr.flush()


def _pct(value: Any) -> str:
    return "n/a" if value is None else f"{value:.4f}"
