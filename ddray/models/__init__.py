"""Pure-PyTorch models: the registered CNN families, the coarse DNN and the coherent CNN-DNN.

No Ray here; Ray workers import these to build their local models. The names below are
imported on first use: :mod:`ddray.models.registry` is read when a config is validated,
before torch needs to be imported.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "CoherentCNNDNN": "ddray.models.coherent",
    "DNNAggregator": "ddray.models.dnn",
    "UnknownModelError": "ddray.models.registry",
    "count_parameters": "ddray.models.registry",
    "create_model": "ddray.models.registry",
    "list_models": "ddray.models.registry",
    "register_model": "ddray.models.registry",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'ddray.models' has no attribute {name!r}")
    return getattr(importlib.import_module(_WHERE[name]), name)
