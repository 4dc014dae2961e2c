"""Streaming coarse level: the DNN refitted as subdomains finish, so a global answer comes before the slowest CNN.

**Fill rule.** A subdomain that has not finished contributes the class prior, the training labels'
class frequencies (:func:`class_prior`), as its probability vector for every sample of every split:
train, val and test alike (:func:`fill_missing`). The DNN therefore always has the flat DNN's input
shape (N x K), learns that a prior-valued block carries no information, and sees at test time what it
saw in training. With every subdomain finished nothing is filled and the fit is the flat DNN's
(same spec, same seed, same inputs): the stream's last entry is the run's DNN.

:class:`CoarseWorker` is the one background thread of the coarse level during the local phase: the
driver hands it the set of finished subdomains after each one (:meth:`CoarseWorker.offer`, never
blocking); the thread fits on the newest set only (older, unfitted sets are skipped, so refits never
pile up), on one torch thread, a moment after the driver has handed the freed worker its next subdomain,
and resting as long as it fitted (``SHARE``: at most half of one core), so the local CNNs keep
the cores and the driver's loop is rarely kept waiting for the GIL.
The same thread starts a multilevel net's regional DNNs as soon as their regions are complete.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable, Mapping

import numpy as np

from ddray.aggregation import DNNOutcome, stack_probabilities, train_dnn
from ddray.coarse.multilevel import Multilevel
from ddray.training.spec import DNNSpec

SPLITS = ("train", "val", "test")
SHARE = 0.5  # at most this share of one core: after fitting for t seconds the thread rests t * (1 / SHARE - 1)
SETTLE_S = 0.2  # after a subdomain finishes, the driver first hands its worker the next subdomain

log = logging.getLogger(__name__)


def class_prior(y_train: np.ndarray, num_classes: int) -> np.ndarray:
    """Training-label frequencies (K,) float32: the probability vector of a subdomain that has not finished."""
    counts = np.bincount(np.asarray(y_train, dtype=np.int64), minlength=num_classes)[:num_classes].astype(np.float64)
    if counts.sum() == 0:
        return np.full(num_classes, 1.0 / num_classes, dtype=np.float32)
    return (counts / counts.sum()).astype(np.float32)


def fill_missing(
    finished: Mapping[int, Mapping[str, np.ndarray]], num_subdomains: int, prior: np.ndarray, sizes: Mapping[str, int]
) -> dict[str, np.ndarray]:
    """Stacked (n, N, K) probabilities per split: finished subdomains' own, every other one the prior."""
    out = {}
    for split, n in sizes.items():
        filler = np.broadcast_to(np.asarray(prior, dtype=np.float32), (n, len(prior)))
        out[split] = stack_probabilities([finished[i][split] if i in finished else filler for i in range(num_subdomains)])
    return out


def fit_partial(
    finished: Mapping[int, Mapping[str, np.ndarray]], labels: Mapping[str, np.ndarray], spec: DNNSpec, prior: np.ndarray
) -> DNNOutcome:
    """The DNN on what exists: :func:`ddray.aggregation.train_dnn` on :func:`fill_missing`'s inputs."""
    sizes = {split: len(labels[split]) for split in SPLITS}
    return train_dnn(fill_missing(finished, spec.num_subdomains, prior, sizes), labels, spec)


def stream_entry(done: list[int], seconds: float, outcome: DNNOutcome | Mapping[str, Any]) -> dict[str, Any]:
    """One refit of results.json's ``aggregation.stream``, from a fit or from the flat DNN's results entry."""
    if isinstance(outcome, DNNOutcome):
        val, test = outcome.fit.best_val_accuracy, outcome.test_accuracy
    else:
        val, test = outcome.get("validation_accuracy"), outcome.get("test_accuracy")
    return {
        "subdomains_done": len(done),
        "subdomains": sorted(int(i) for i in done),
        "seconds": round(float(seconds), 3),
        "validation_accuracy": None if val is None else float(val),
        "test_accuracy": None if test is None else float(test),
    }


class CoarseWorker:
    """The coarse level's background thread during the local phase (see the module docstring).

    ``spec`` (streaming) refits the DNN on each newest incomplete set and hands each entry to ``on_entry``
    (in this thread); ``multilevel`` fits regions as they complete. ``clock()`` gives the entry's seconds.
    The complete set is left to the driver, which fits the flat DNN (and what is left of the multilevel
    net) itself after the local phase, after :meth:`close`.
    """

    def __init__(
        self,
        *,
        labels: Mapping[str, np.ndarray],
        num_subdomains: int,
        spec: DNNSpec | None = None,
        prior: np.ndarray | None = None,
        multilevel: Multilevel | None = None,
        clock: Callable[[], float] = time.perf_counter,
        on_entry: Callable[[dict[str, Any]], None] = lambda entry: None,
        share: float = SHARE,
    ):
        self.labels, self.num_subdomains, self.spec, self.prior = labels, num_subdomains, spec, prior
        self.multilevel, self.clock, self.on_entry, self.share = multilevel, clock, on_entry, share
        self.entries: list[dict[str, Any]] = []
        self.skipped = 0  # sets replaced by a newer one before they were fitted
        self.error: str | None = None
        self._latest: dict[int, Mapping[str, np.ndarray]] | None = None
        self._fitted_done = -1
        self._stopping = False
        self._wake = threading.Condition()
        self._thread = threading.Thread(target=self._loop, name="ddray-coarse", daemon=True)
        self._thread.start()

    def offer(self, finished: Mapping[int, Mapping[str, np.ndarray]]) -> None:
        """The subdomains finished so far (index -> split -> (n, K)); returns at once."""
        with self._wake:
            if self._latest is not None:
                self.skipped += 1
            self._latest = dict(finished)
            self._wake.notify()

    def close(self) -> list[dict[str, Any]]:
        """Stop after the fit under way (a newer set waiting is dropped: the driver's final fit replaces it); the entries."""
        with self._wake:
            self._stopping = True
            self._wake.notify()
        self._thread.join()
        return self.entries

    def _loop(self) -> None:
        # No lowered priority: the fits hold the GIL, and a thread that waits for CPU while holding it would hold
        # up the driver's loop (measured: the local phase up to 2.8x slower with nice +10 on busy cores).
        while True:
            with self._wake:
                while self._latest is None and not self._stopping:
                    self._wake.wait()
                if self._stopping:
                    return
                self._wake.wait_for(lambda: self._stopping, timeout=SETTLE_S)  # newer sets replace this one meanwhile
                if self._stopping:
                    return
                finished, self._latest = self._latest, None
            started = time.perf_counter()
            try:
                self._work(finished)
            except Exception as err:  # noqa: BLE001 - the stream is a preview: the run goes on, the final fit still happens
                self.error = f"{type(err).__name__}: {err}"
                log.warning("ddray: the coarse level's background fits stopped (%s); the final fit still happens", self.error)
                return
            rest = (time.perf_counter() - started) * (1.0 / self.share - 1.0)  # sets arriving meanwhile replace each other
            with self._wake:
                self._wake.wait_for(lambda: self._stopping, timeout=rest)

    def _work(self, finished: Mapping[int, Mapping[str, np.ndarray]]) -> None:
        done = len(finished)
        if self.spec is not None and 0 < done < self.num_subdomains and done > self._fitted_done:  # the answer first
            outcome = fit_partial(finished, self.labels, self.spec, self.prior)  # one torch thread (train_dnn)
            self._fitted_done = done
            entry = stream_entry(list(finished), self.clock(), outcome)
            self.entries.append(entry)
            self.on_entry(entry)
        if self.multilevel is not None:  # then every region whose subdomains are all done
            self.multilevel.fit_ready(finished, stop=lambda: self._stopping)
