"""A multilevel coarse net: a regional DNN per region of neighbouring subdomains, then the global DNN.

``aggregation.levels: [[2, 2]]`` on a 4x4 grid: four regions of 2x2 subdomains (:mod:`.regions`). Each
regional DNN maps its subdomains' probabilities (n_region x K) to K class probabilities; it is the
flat DNN of :func:`ddray.aggregation.train_dnn` on fewer inputs (same hidden layers, epochs, lr, seed
and ``fit_on``: trained on train, or val's fit part, its epoch selected on held-out samples, scored on
test). The next level takes the regional outputs of its regions on every split, and the global DNN
takes the coarsest level's. So every coarse model stays small however many subdomains there are.

The global DNN is handled as one more level with one region holding every unit of the coarsest level.
A region can be fitted as soon as its inputs exist (:meth:`Multilevel.ready`), which is how the driver
starts regional DNNs while other subdomains still train. Every fit runs on one torch thread
(:func:`ddray.aggregation.one_thread`), so a fit gives the same weights whether it ran during the local
phase or after it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from ddray.aggregation import one_thread, stack_probabilities, train_dnn
from ddray.coarse.regions import hierarchy
from ddray.models import count_parameters
from ddray.training.loop import predict_proba
from ddray.training.spec import DNNSpec

SPLITS = ("train", "val", "test")


@dataclass
class RegionFit:
    level: int  # 1 .. len(levels); len(levels) + 1 is the global DNN
    region: int
    inputs: list[int]  # units of level - 1 (subdomains at level 1)
    subdomains: list[int]
    spec: DNNSpec
    model: torch.nn.Module
    outputs: dict[str, np.ndarray]  # (n, K) per split
    validation_accuracy: float
    test_accuracy: float
    parameters: int
    fit_seconds: float

    def summary(self) -> dict[str, Any]:
        return {
            "level": self.level, "region": self.region, "subdomains": self.subdomains,
            "test_accuracy": self.test_accuracy, "validation_accuracy": self.validation_accuracy,
            "parameters": self.parameters,
        }


class Multilevel:
    """The regional DNNs and the global DNN of one run, fitted region by region as their inputs arrive."""

    def __init__(self, grid: Sequence[int], levels: Sequence[Sequence[int]], flat: DNNSpec, labels: Mapping[str, np.ndarray]):
        self.grid, self.levels = [int(g) for g in grid], [[int(s) for s in shape] for shape in levels]
        self.flat, self.labels = flat, labels
        self.tree = hierarchy(self.grid, self.levels)
        self.tree.append([list(range(len(self.tree[-1]) if self.tree else flat.num_subdomains))])  # the global DNN
        self.fits: dict[tuple[int, int], RegionFit] = {}
        self.wall_s = 0.0

    @property
    def top(self) -> int:
        """The global DNN's level."""
        return len(self.tree)

    def _subdomains(self, level: int, region: int) -> list[int]:
        units = [region]
        for members in reversed(self.tree[:level]):
            units = [m for u in units for m in members[u]]
        return sorted(units)

    def ready(self, done: set[int] | Mapping[int, Any]) -> list[tuple[int, int]]:
        """Regions not yet fitted whose inputs all exist: level-1 regions whose subdomains are in ``done``,
        higher ones whose member regions are fitted. Lower levels first."""
        out = []
        for level, regions in enumerate(self.tree, start=1):
            for region, members in enumerate(regions):
                if (level, region) in self.fits:
                    continue
                have = all(m in done for m in members) if level == 1 else all((level - 1, m) in self.fits for m in members)
                if have:
                    out.append((level, region))
        return out

    def fit_region(self, level: int, region: int, local: Mapping[int, Mapping[str, np.ndarray]]) -> RegionFit:
        """Fit one region's DNN on its inputs' probabilities (``local``: subdomain -> split -> (n, K))."""
        started = time.perf_counter()
        members = self.tree[level - 1][region]
        if level == 1:
            probs = {s: stack_probabilities([local[m][s] for m in members]) for s in SPLITS}
        else:
            probs = {s: stack_probabilities([self.fits[(level - 1, m)].outputs[s] for m in members]) for s in SPLITS}
        spec = replace(self.flat, num_subdomains=len(members))
        with one_thread():
            outcome = train_dnn(probs, self.labels, spec)
            outputs = {s: predict_proba(outcome.model, probs[s]) for s in ("train", "val")}
        outputs["test"] = outcome.test_probabilities
        fit = RegionFit(level, region, list(members), self._subdomains(level, region), spec, outcome.model.eval(), outputs,
                        float(outcome.fit.best_val_accuracy), float(outcome.test_accuracy), outcome.parameters,
                        time.perf_counter() - started)
        self.fits[(level, region)] = fit
        self.wall_s += fit.fit_seconds
        return fit

    def fit_ready(self, local: Mapping[int, Mapping[str, np.ndarray]], stop=lambda: False) -> int:
        """Fit every region whose inputs exist (repeatedly: a fitted region may complete the next level's); how many."""
        count = 0
        while not stop() and (todo := self.ready(local)):
            for level, region in todo:
                if stop():
                    break
                self.fit_region(level, region, local)
                count += 1
        return count

    def finish(self, local: Mapping[int, Mapping[str, np.ndarray]]) -> dict[str, Any]:
        """Fit what is left (every subdomain is done) and return results.json's ``aggregation.multilevel``."""
        missing = set(range(self.flat.num_subdomains)) - set(local)
        if missing:
            raise ValueError(f"the multilevel coarse net needs every subdomain; missing {sorted(missing)}")
        started = time.perf_counter()
        self.fit_ready(local)
        top = self.fits[(self.top, 0)]
        coarse = sum(f.parameters for f in self.fits.values())
        return {
            "test_accuracy": top.test_accuracy,
            "validation_accuracy": top.validation_accuracy,  # the global DNN's, on its selection samples
            "parameters": coarse,  # every regional DNN and the global DNN together
            "flat_dnn_parameters": count_parameters(self.flat.build()),
            "largest_coarse_parameters": max(f.parameters for f in self.fits.values()),
            "levels": self.levels,
            "regions": [f.summary() for key, f in sorted(self.fits.items()) if key[0] < self.top],
            "global": {"inputs": len(top.inputs), "parameters": top.parameters},
            "fit_seconds": round(self.wall_s, 3),  # all coarse fits, wherever they ran
            "train_wall_s": round(time.perf_counter() - started, 3),  # what was left after the local phase
        }

    def saved(self) -> dict[str, Any]:
        """What :func:`predict` needs, as builtins and tensors (``RunDir.save_multilevel``)."""
        return {
            "grid": self.grid,
            "levels": self.levels,
            "models": [
                {"level": lvl, "region": reg, "inputs": f.inputs, "spec": f.spec.to_dict(), "state_dict": {k: v.detach().cpu() for k, v in f.model.state_dict().items()}}
                for (lvl, reg), f in sorted(self.fits.items())
            ],
        }


def load_models(saved: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The saved regional and global DNNs, built and loaded, in fitting order."""
    out = []
    for entry in saved["models"]:
        spec = DNNSpec.from_dict(entry["spec"])
        model = spec.build()
        model.load_state_dict(entry["state_dict"])
        out.append({"level": int(entry["level"]), "region": int(entry["region"]), "inputs": list(entry["inputs"]), "model": model.eval()})
    return out


def predict(models: Sequence[Mapping[str, Any]], probs: np.ndarray) -> np.ndarray:
    """Class probabilities (n, K) of the multilevel net on local probabilities (n, N, K)."""
    outputs: dict[tuple[int, int], np.ndarray] = {}
    top = max(m["level"] for m in models)
    for m in sorted(models, key=lambda m: (m["level"], m["region"])):
        if m["level"] == 1:
            x = probs[:, m["inputs"], :]
        else:
            x = np.stack([outputs[(m["level"] - 1, i)] for i in m["inputs"]], axis=1)
        outputs[(m["level"], m["region"])] = predict_proba(m["model"], np.ascontiguousarray(x, dtype=np.float32))
    return outputs[(top, 0)]
