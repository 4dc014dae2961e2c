"""Classifying new inputs with a finished run (no Ray needed).

The saved run holds everything: the preprocessing, the subdomain bounds, each
local CNN's weights and the DNN's. Prediction replays the preprocessing (the
run's ``preprocessing.json``: value scale, resize, channel statistics; see
docs/preprocessing.md), the decomposition and the coarse step exactly as in
training, and flags inputs far from the training distribution.
"""

from __future__ import annotations

import json
import warnings as _warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ddray.aggregation import average_predict, stack_probabilities, vote_predict
from ddray.data import Preprocessing, read_predict_inputs
from ddray.decomposition import Subdomain
from ddray.run_dir import RunDir
from ddray.training.loop import predict_proba
from ddray.training.spec import TrainingSpec


@dataclass
class Predictions:
    names: list[str]
    class_names: list[str]
    decisions: dict[str, np.ndarray]  # method -> (n,) class index
    probabilities: np.ndarray | None  # DNN probabilities (n, K), if the run has a DNN
    warnings: list[str] = field(default_factory=list)  # inputs far from the training distribution

    def records(self) -> list[dict]:
        rows = []
        for i, name in enumerate(self.names):
            row = {"input": name}
            for method, pred in self.decisions.items():
                row[method] = self.class_names[int(pred[i])]
            if self.probabilities is not None:
                row["dnn_confidence"] = round(float(self.probabilities[i].max()), 4)
            rows.append(row)
        return rows


class InputRangeWarning(UserWarning):
    """Inputs far from the training distribution (e.g. 0-255 values for a model trained on 0-1)."""


class TrainedRun:
    """A finished run loaded for inference.

    Runs made before the value-scale rule (a ``preprocessing.json`` without ``value_scale``)
    load with their old behaviour: npz arrays used as stored, image files divided by 255.
    """

    def __init__(self, root: str | Path):
        self.run_dir = RunDir(Path(root))
        self.config = self.run_dir.read_config()
        results = self.run_dir.read_results()
        self.class_names = results.get("dataset", {}).get("class_names") or []
        self.preprocessing = Preprocessing.from_dict(json.loads(self.run_dir.preprocessing.read_text()))
        self.subdomains = [
            Subdomain(index=s["index"], position=tuple(s["position"]), bounds=tuple(tuple(b) for b in s["bounds"]))
            for s in json.loads(self.run_dir.subdomains.read_text())
        ]
        self.local_models = [self._load_local(s.index) for s in self.subdomains]
        self.dnn = self._load_dnn() if self.run_dir.dnn.exists() else None
        self.multilevel = None  # the regional and global DNNs of aggregation.levels (docs/coarse.md)
        if self.run_dir.multilevel.exists():
            from ddray.coarse.multilevel import load_models

            self.multilevel = load_models(self.run_dir.load_multilevel())
        if not self.class_names:
            k = self.local_models[0][1].model.num_classes
            self.class_names = [str(i) for i in range(k)]

    def _load_local(self, index: int) -> tuple[torch.nn.Module, TrainingSpec]:
        state, spec = self.run_dir.load_local_model(index)
        model = spec.model.build()
        model.load_state_dict(state)
        return model.eval(), spec

    def _load_dnn(self) -> torch.nn.Module:
        state, spec = self.run_dir.load_dnn()
        model = spec.build()
        model.load_state_dict(state)
        return model.eval()

    def local_probabilities(self, x: np.ndarray) -> np.ndarray:
        """(n, N, K) probabilities of every local CNN on its own subimage."""
        return stack_probabilities([predict_proba(model, np.ascontiguousarray(sub.extract(x))) for sub, (model, _) in zip(self.subdomains, self.local_models)])

    def predict_array(
        self,
        x: np.ndarray,
        names: list[str] | None = None,
        *,
        preprocessed: bool | None = None,
        origin: str = "inputs",
        warn: bool = True,
    ) -> Predictions:
        """Classify ``x`` (N, C, *spatial).

        ``preprocessed=False``: ``x`` holds stored values, like the ``x`` of an .npz (uint8 images,
        floats ...), and is scaled, resized and normalised with the run's preprocessing record.
        ``preprocessed=True``: ``x`` already holds model inputs (e.g. a ``Dataset``'s normalised
        splits) and is used as it is. ``None`` (default): stored values, unless a float ``x`` looks
        like this run's model inputs (per-channel mean ~0 and std ~1 while the training data were
        not), which is then used as it is, with a warning; pass the flag to be explicit.

        Inputs far from the training distribution are listed in ``Predictions.warnings`` (and,
        with ``warn``, also raised as :class:`InputRangeWarning`); the predictions are still made.
        """
        found: list[str] = []
        if preprocessed is None:
            preprocessed = self.preprocessing.looks_normalised(x)
            if preprocessed:
                found.append(
                    f"{origin}: inputs look like model inputs already (per-channel mean ~0, std ~1, unlike the "
                    f"training data: {self.preprocessing.training_values()}), so they were used as they are; pass "
                    f"preprocessed=True to say so, or preprocessed=False to have them normalised as stored values"
                )
        if preprocessed:
            found += self.preprocessing.check_model_inputs(x, origin=origin)
            x = np.ascontiguousarray(x, dtype=np.float32)
        else:
            x, more = self.preprocessing.prepare(x, origin=origin)
            found += more
        if warn:
            for message in found:
                _warnings.warn(message, InputRangeWarning, stacklevel=2)
        probs = self.local_probabilities(x)
        decisions = {"average": average_predict(probs), "vote": vote_predict(probs)}
        dnn_probs = None
        if self.dnn is not None:
            dnn_probs = predict_proba(self.dnn, probs)
            decisions = {"dnn": dnn_probs.argmax(1), **decisions}
        if self.multilevel is not None:
            from ddray.coarse.multilevel import predict as multilevel_predict

            decisions["multilevel"] = multilevel_predict(self.multilevel, probs).argmax(1)
        return Predictions(names or [f"x[{i}]" for i in range(len(x))], self.class_names, decisions, dnn_probs, found)

    def predict_path(self, path: str | Path, *, warn: bool = True) -> Predictions:
        """Classify an .npz (array 'x' as stored), an image file or a folder of images."""
        x, names = read_predict_inputs(path, self.preprocessing)
        return self.predict_array(x, names, preprocessed=False, origin=str(path), warn=warn)
