"""Where and when a run's coarse level does its work: during the local phase (streaming refits,
multilevel regions: a thread of the driver) and after it (average, vote, the DNN fit).

After the local phase the work goes to the phase's last worker when there is one: that process has
torch's lazy imports loaded already, where the driver would first import them (see
:func:`after_local_phase`). Ray-facing; the coarse models themselves are ``ddray.aggregation`` and
``ddray.coarse``.
"""

from __future__ import annotations

import json
import logging
from typing import Any, Callable

import ray

from ddray import plots
from ddray.coarse.multilevel import Multilevel
from ddray.coarse.streaming import CoarseWorker, class_prior
from ddray.config import RunConfig
from ddray.data import Dataset
from ddray.orchestration.local_phase import WORKER_LOST
from ddray.progress import ProgressTracker
from ddray.run_dir import RunDir
from ddray.storage import write_json
from ddray.training.local import warm_up
from ddray.training.spec import dnn_spec

log = logging.getLogger(__name__)


def prepare_aggregation(fit_here: bool) -> None:
    """The imports the end of a run needs, made while the workers train (in a thread of the driver):
    the pictures need matplotlib; a DNN fitted in this process (``fit_here``) needs what its first
    optimizer step imports, torch._dynamo (a second of CPU). Not earlier: Ray and the workers start
    on the same cores; not later: the run's end would wait for them, on one core."""
    if fit_here:
        warm_up()
    plots.warm_up()


def after_local_phase(worker: Any, *calls: Callable[[], Any]) -> list:
    """The driver's torch work after the local phase (average, vote and the DNN fit; the parameter
    counts): on the local phase's last worker when there is one (the caller stops it or hands it
    on), else in this process; no new process either way.

    The worker has torch's lazy imports loaded, which the driver would import first: torch._dynamo
    (an optimizer's first step) and the meta device's decompositions (the parameter counts) took
    1-2 s of CPU, competing with the local CNNs' training. The DNN fits on one torch thread in
    both places, so its result is the same.
    """
    if worker is not None:
        try:
            return ray.get(worker.run.remote(list(calls)))
        except WORKER_LOST as err:  # e.g. its node went away: here instead
            log.warning("the worker kept for the aggregation was lost (%s); aggregating in the driver", err)
    return [call() for call in calls]


def start_coarse(
    config: RunConfig, run_dir: RunDir, dataset: Dataset, labels: dict, tracker: ProgressTracker, clock, restored
) -> tuple[CoarseWorker | None, Multilevel | None, list[dict]]:
    """The coarse level's background thread for ``aggregation.streaming`` / ``levels`` (docs/coarse.md): (worker,
    the multilevel net, the stream's entries so far: those of earlier sessions of a resumed run)."""
    agg = config.aggregation
    if not (agg.streaming or agg.levels):
        return None, None, []
    flat = dnn_spec(config, num_subdomains=config.decomposition.num_subdomains, num_classes=dataset.num_classes)
    multilevel = Multilevel(config.decomposition.grid, agg.levels, flat, labels) if agg.levels else None
    earlier = json.loads(run_dir.stream.read_text()) if agg.streaming and run_dir.stream.exists() else []
    stream = [e for e in earlier if set(e.get("subdomains") or ()) <= set(restored)]  # a resumed run's refits that still hold

    def on_entry(entry: dict) -> None:  # in the worker's thread
        stream.append(entry)
        write_json(run_dir.stream, stream)
        tracker.global_accuracy(entry)

    worker = CoarseWorker(
        labels=labels, num_subdomains=flat.num_subdomains, spec=flat if agg.streaming else None,
        prior=class_prior(dataset.y_train, dataset.num_classes), multilevel=multilevel, clock=clock, on_entry=on_entry,
    )
    return worker, multilevel, stream
