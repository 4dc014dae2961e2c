"""The ``aggregation`` section: the coarse level (the DNN, average, vote; streaming and multilevel)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from ddray.config.section import Section


class DNNConfig(Section):
    hidden: list[int] = Field(default_factory=lambda: [64])
    epochs: int = Field(60, ge=1)
    lr: float = Field(0.003, gt=0.0)
    batch_size: int = Field(128, ge=1)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    fit_on: Literal["train", "val"] = Field(
        "train",
        description="the local probabilities the DNN learns from: 'train' (the local CNNs' own, often over-confident, "
        "training set) or 'val' (held out: fit on 3/4 of the validation split, the epoch chosen on the other 1/4)",
    )

    @field_validator("hidden")
    @classmethod
    def _positive(cls, hidden: list[int]) -> list[int]:
        if any(h < 1 for h in hidden):
            raise ValueError("every hidden layer size must be >= 1")
        return hidden


class AggregationConfig(Section):
    """The coarse level (docs/models.md; streaming and multilevel: docs/coarse.md)."""

    methods: list[Literal["dnn", "average", "vote"]] = Field(default_factory=lambda: ["dnn", "average", "vote"])
    dnn: DNNConfig = Field(default_factory=DNNConfig)
    streaming: bool = Field(False, description="refit the DNN as each subdomain finishes (missing ones at the class prior)")
    levels: list[list[int]] = Field(default_factory=list, description="region shapes of a multilevel coarse net, coarsest last")

    @field_validator("methods")
    @classmethod
    def _non_empty(cls, methods: list[str]) -> list[str]:
        if not methods:
            raise ValueError("at least one aggregation method is needed: dnn, average or vote")
        return list(dict.fromkeys(methods))
