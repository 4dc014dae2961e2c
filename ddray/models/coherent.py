"""CoherentCNNDNN: local CNNs and the coarse DNN as one network, trained end to end.

It is both the "coherent" baseline (train everything jointly from scratch)
and the "transfer" one (start from separately trained local models and DNN,
whose state_dicts load into ``local_models.<i>`` and ``dnn``; see
:func:`ddray.training.baselines.build_model`).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn

from ddray.decomposition import Subdomain
from ddray.models.dnn import DNNAggregator


class CoherentCNNDNN(nn.Module):
    def __init__(self, local_models: Sequence[nn.Module], subdomains: Sequence[Subdomain], dnn: DNNAggregator):
        super().__init__()
        if len(local_models) != len(subdomains):
            raise ValueError(f"got {len(local_models)} local models for {len(subdomains)} subdomains")
        if getattr(dnn, "num_subdomains", len(subdomains)) != len(subdomains):
            raise ValueError(f"the DNN expects {dnn.num_subdomains} subdomains, the decomposition has {len(subdomains)}")
        self.local_models = nn.ModuleList(local_models)
        self.subdomains = list(subdomains)
        self.dnn = dnn

    def local_probabilities(self, x: torch.Tensor) -> torch.Tensor:
        """Softmax outputs of every local model on its subdomain of ``x``: (B, N, K)."""
        probs = [torch.softmax(model(s.extract(x)), dim=1) for model, s in zip(self.local_models, self.subdomains)]
        return torch.stack(probs, dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dnn(self.local_probabilities(x))
