"""The ``tune`` section: the per-subdomain Ray Tune search and what it may vary."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from ddray.config.section import Section


class SearchSpaceEntry(Section):
    """One hyperparameter's sampler; exactly one of the keys is set."""

    choice: list[Any] | None = None
    uniform: list[float] | None = None
    loguniform: list[float] | None = None
    grid: list[Any] | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> "SearchSpaceEntry":
        set_keys = [k for k in ("choice", "uniform", "loguniform", "grid") if getattr(self, k) is not None]
        if len(set_keys) != 1:
            raise ValueError("give exactly one sampler: choice, uniform, loguniform or grid")
        for key in ("uniform", "loguniform"):
            bounds = getattr(self, key)
            if bounds is not None:
                if len(bounds) != 2 or bounds[0] >= bounds[1]:
                    raise ValueError(f"{key} needs [low, high] with low < high")
                if key == "loguniform" and bounds[0] <= 0:
                    raise ValueError("loguniform bounds must be > 0")
        for key in ("choice", "grid"):
            values = getattr(self, key)
            if values is not None and not values:
                raise ValueError(f"{key} needs at least one value")
        return self


TUNABLE = ("lr", "weight_decay", "batch_size", "width", "epochs", "optimizer")


class TuneConfig(Section):
    """Per-subdomain hyperparameter search with Ray Tune."""

    num_samples: int = Field(2, ge=1)
    search_alg: Literal["random", "optuna"] = "random"
    scheduler: Literal["none", "asha"] = "none"
    space: dict[str, SearchSpaceEntry] = Field(default_factory=dict)
    max_concurrent_trials: int | None = Field(None, ge=1)
    metric: Literal["val_accuracy", "val_loss"] = "val_accuracy"
    grace_period: int = Field(1, ge=1, description="ASHA: epochs before a trial may be stopped")
    allocation: Literal["uniform", "adaptive"] = Field(
        "uniform",
        description="uniform: num_samples trials (x grid points) for every subdomain; adaptive: the same total, "
        "min_trials_per_subdomain each first, the rest in rounds to the subdomains where another trial is expected "
        "to raise validation accuracy most (docs/tuning.md)",
    )
    min_trials_per_subdomain: int = Field(2, ge=1, description="adaptive: trials every subdomain gets before the rest is allocated")

    @field_validator("space")
    @classmethod
    def _known_keys(cls, space: dict[str, SearchSpaceEntry]) -> dict[str, SearchSpaceEntry]:
        unknown = sorted(set(space) - set(TUNABLE))
        if unknown:
            raise ValueError(f"cannot tune {unknown}; tunable: {', '.join(TUNABLE)}")
        return space

    @field_validator("space")
    @classmethod
    def _values_in_range(cls, space: dict[str, SearchSpaceEntry]) -> dict[str, SearchSpaceEntry]:
        """Every value a sampler can draw must be one a training accepts: checked here, not in a trial."""
        ranges = {
            "width": (lambda v: 0 < v <= 1, "outside (0, 1]"),
            "lr": (lambda v: v > 0, "not > 0"),
            "weight_decay": (lambda v: v >= 0, "negative"),
            "batch_size": (lambda v: v >= 1, "below 1"),
            "epochs": (lambda v: v >= 1, "below 1"),
        }
        for name, entry in space.items():
            values = entry.choice or entry.grid or entry.uniform or entry.loguniform or []
            if name == "optimizer":
                bad = [v for v in values if v not in ("adam", "adamw", "sgd")]
                if bad:
                    raise ValueError(f"tune.space.optimizer: {bad} unknown; choose from adam, adamw, sgd")
                continue
            ok, why = ranges[name]
            for v in values:
                if not isinstance(v, (int, float)) or isinstance(v, bool) or not ok(v):
                    raise ValueError(f"tune.space.{name}: {v!r} is {why if isinstance(v, (int, float)) else 'not a number'}")
        return space

    @model_validator(mode="after")
    def _budget_covers_minimum(self) -> "TuneConfig":
        if self.allocation == "adaptive":
            per_subdomain = self.num_samples
            for e in self.space.values():
                per_subdomain *= len(e.grid) if e.grid is not None else 1
            if self.min_trials_per_subdomain > per_subdomain:
                raise ValueError(
                    f"tune.min_trials_per_subdomain ({self.min_trials_per_subdomain}) is above the trials per subdomain of "
                    f"the budget (num_samples x grid points = {per_subdomain}): lower tune.min_trials_per_subdomain "
                    f"or raise tune.num_samples"
                )
        return self

    @model_validator(mode="after")
    def _optuna_no_grid(self) -> "TuneConfig":
        if self.search_alg == "optuna" and any(e.grid is not None for e in self.space.values()):
            raise ValueError("search_alg 'optuna' cannot sample a 'grid' entry; use choice instead")
        return self
