"""The coarse DNN of the CNN-DNN method: N local class-probability vectors -> one global decision."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn


class DNNAggregator(nn.Module):
    """MLP over the concatenated local probabilities; returns logits (B, K).

    Accepts inputs shaped (B, N, K) or already flattened (B, N*K).
    """

    def __init__(self, num_subdomains: int, num_classes: int, hidden: Sequence[int] = (64,), dropout: float = 0.0):
        super().__init__()
        if num_subdomains < 1 or num_classes < 1:
            raise ValueError(f"num_subdomains and num_classes must be >= 1, got {num_subdomains} and {num_classes}")
        self.num_subdomains = num_subdomains
        self.num_classes = num_classes
        layers: list[nn.Module] = []
        c_in = num_subdomains * num_classes
        for h in hidden:
            layers += [nn.Linear(c_in, h), nn.ReLU(inplace=True)]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            c_in = h
        layers.append(nn.Linear(c_in, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, probs: torch.Tensor) -> torch.Tensor:
        expected = self.num_subdomains * self.num_classes
        if probs.dim() == 3:
            if probs.shape[1:] != (self.num_subdomains, self.num_classes):
                raise ValueError(
                    f"expected probabilities shaped (B, {self.num_subdomains}, {self.num_classes}), got {tuple(probs.shape)}"
                )
            probs = probs.flatten(1)
        elif probs.dim() != 2 or probs.shape[1] != expected:
            raise ValueError(
                f"expected probabilities shaped (B, {self.num_subdomains}, {self.num_classes}) or (B, {expected}), "
                f"got {tuple(probs.shape)}"
            )
        return self.net(probs)
