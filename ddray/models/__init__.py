"""Pure-PyTorch models: the registered CNN families, the coarse DNN and the coherent CNN-DNN.

No Ray here; Ray workers import these to build their local models.
"""

from ddray.models.coherent import CoherentCNNDNN
from ddray.models.dnn import DNNAggregator
from ddray.models.registry import UnknownModelError, count_parameters, create_model, list_models, register_model

__all__ = [
    "CoherentCNNDNN",
    "DNNAggregator",
    "UnknownModelError",
    "count_parameters",
    "create_model",
    "list_models",
    "register_model",
]
