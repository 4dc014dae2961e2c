"""One configuration schema for the CLI, the Python API and the REST service.

Every section forbids unknown keys, so a typo fails with the field's name
before any data is read or any Ray worker starts. The sections live in the
package's modules (``data``, ``training``, ...); ``RunConfig`` puts them
together and checks what depends on several of them. Import everything from
``ddray.config``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from ddray.config.data import FOLDER_SOURCES, DatasetConfig, DecompositionConfig
from ddray.config.section import ConfigError, Section
from ddray.config.training import (
    AugmentConfig,
    BaselinesConfig,
    LocalModelConfig,
    ResourcesConfig,
    TrainingConfig,
)
from ddray.limits import Limits, env_name

__all__ = [
    "FOLDER_SOURCES", "TUNABLE", "AggregationConfig", "AugmentConfig", "BaselinesConfig", "ConfigError", "DatasetConfig",
    "DecompositionConfig", "DNNConfig", "LocalModelConfig", "ResourcesConfig", "RunConfig", "SearchSpaceEntry",
    "TrainingConfig", "TuneConfig", "format_validation_error", "limit_problems", "load_config", "parse_config",
]


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


class RunConfig(Section):
    """A whole ddray job."""

    dataset: DatasetConfig = Field(default_factory=DatasetConfig)
    decomposition: DecompositionConfig = Field(default_factory=DecompositionConfig)
    local_model: LocalModelConfig = Field(default_factory=LocalModelConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    aggregation: AggregationConfig = Field(default_factory=AggregationConfig)
    resources: ResourcesConfig = Field(default_factory=ResourcesConfig)
    tune: TuneConfig | None = None
    compare: list[Literal["global", "coherent", "transfer"]] = Field(default_factory=list)
    baselines: BaselinesConfig = Field(default_factory=BaselinesConfig)
    storage: str | None = Field(None, description="shared folder or URI for checkpoints on multi-node clusters")
    seed: int = 0
    sweep: dict[str, list[Any]] | None = Field(
        None,
        description="dotted config keys to lists of values, e.g. {decomposition.grid: [[2, 2], [4, 4]], seed: [0, 1, 2]}: "
        "`ddray sweep` runs every combination (docs/sweeps.md); `ddray run` refuses such a config",
    )

    @model_validator(mode="after")
    def _dims_agree(self) -> "RunConfig":
        ds = self.dataset
        if ds.source == "synthetic" and len(ds.size) != len(self.decomposition.grid):
            raise ValueError(
                f"dataset.size {ds.size} has {len(ds.size)} dimensions but decomposition.grid "
                f"{self.decomposition.grid} has {len(self.decomposition.grid)}; use a 2-entry grid for images, 3 for volumes"
            )
        return self

    @model_validator(mode="after")
    def _models_fit_the_run(self) -> "RunConfig":
        """Cross-section model checks (the data's dimensions, what transfer starts from), before any data is read."""
        from ddray.models.registry import check_model

        m = self.local_model
        check_model(m.name, spatial_dims=self.spatial_dims, stem=m.stem, head=m.head)
        if "transfer" in self.compare and self.baselines.transfer_init == "locals_and_dnn" and "dnn" not in self.aggregation.methods:
            raise ValueError(
                "baselines.transfer_init: locals_and_dnn starts from the trained DNN, but aggregation.methods has no 'dnn'; "
                "add dnn to aggregation.methods or use transfer_init: locals"
            )
        return self

    @model_validator(mode="after")
    def _coarse_levels(self) -> "RunConfig":
        from ddray.coarse.regions import level_problem

        if self.aggregation.streaming and "dnn" not in self.aggregation.methods:
            raise ValueError("aggregation.streaming refits the DNN: add dnn to aggregation.methods or drop streaming")
        problem = level_problem(self.decomposition.grid, self.aggregation.levels)
        if problem:
            raise ValueError(f"aggregation.levels: {problem}")
        return self

    @model_validator(mode="after")
    def _within_limits(self) -> "RunConfig":
        problems = limit_problems(self, Limits())
        if problems:
            raise ValueError("\n  ".join(problems))
        return self

    @model_validator(mode="after")
    def _sweep_combinations(self) -> "RunConfig":
        """Every combination of the sweep is a valid config: checked here, before any of its runs starts."""
        if self.sweep is None:
            return self
        from ddray import combinations

        base = self.model_dump(mode="json", exclude={"sweep"})
        problems = combinations.problems(base, self.sweep, RunConfig, _problem_lines, Limits().sweep_runs)
        if problems:
            raise ValueError("\n  ".join(problems))
        return self

    @property
    def spatial_dims(self) -> int:
        return len(self.decomposition.grid)


def _product(values: list[int] | None) -> int:
    n = 1
    for v in values or []:
        n *= v
    return n


def limit_problems(config: "RunConfig", limits: Limits) -> list[str]:
    """Every value over its bound, as 'field: value is above the limit N (set DDRAY_MAX_X to lift it)'."""
    ds, t, res = config.dataset, config.training, config.resources
    checks: list[tuple[str, float | None, str]] = [
        ("training.epochs", t.epochs, "epochs"),
        ("baselines.epochs", config.baselines.epochs, "epochs"),
        ("aggregation.dnn.epochs", config.aggregation.dnn.epochs, "epochs"),
        ("decomposition.grid (subdomains)", config.decomposition.num_subdomains, "subdomains"),
        ("dataset.size (pixels)", _product(ds.size) if ds.source == "synthetic" else None, "image_pixels"),
        ("dataset.image_size (pixels)", _product(ds.image_size) if ds.image_size else None, "image_pixels"),
        ("dataset.samples", ds.samples, "samples"),
        ("dataset.limit", ds.limit, "samples"),
        ("dataset.channels", ds.channels, "channels"),
        ("aggregation.dnn.hidden", max(config.aggregation.dnn.hidden, default=None), "hidden"),
        ("aggregation.dnn.hidden (layers)", len(config.aggregation.dnn.hidden), "hidden_layers"),
        ("training.batch_size", t.batch_size, "batch_size"),
        ("aggregation.dnn.batch_size", config.aggregation.dnn.batch_size, "batch_size"),
        ("baselines.batch_size", config.baselines.batch_size, "batch_size"),
        ("resources.cpus_per_subdomain", res.cpus_per_subdomain, "cpus_per_subdomain"),
        ("resources.gpus_per_subdomain", res.gpus_per_subdomain, "gpus_per_subdomain"),
        ("resources.num_workers", res.num_workers, "workers"),
        ("resources.max_retries", res.max_retries, "retries"),
    ]
    if config.tune is not None:
        checks.append(("tune.num_samples", config.tune.num_samples, "trials"))
        for key, bound in (("epochs", "epochs"), ("batch_size", "batch_size")):
            entry = config.tune.space.get(key)
            values = [v for v in (entry.choice or entry.grid or entry.uniform or entry.loguniform or []) if isinstance(v, (int, float))] if entry else []
            checks.append((f"tune.space.{key}", max(values, default=None), bound))
    out = []
    for field, value, bound in checks:
        cap = getattr(limits, bound)
        if value is not None and value > cap:
            out.append(f"{field}: {_number(value)} is above the limit {_number(cap)} (set {env_name(bound)} to lift it)")
    return out


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def format_validation_error(err: ValidationError) -> str:
    """Readable one-line-per-problem text: 'training.optimizer: Input should be ...'."""
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"])
        msg = e["msg"].removeprefix("Value error, ")
        lines.append(f"{loc}: {msg}" if loc else msg)
    return "invalid config:\n  " + "\n  ".join(lines)


def _problem_lines(data: dict[str, Any]) -> list[str]:
    """What is wrong with ``data`` as a RunConfig, one line per problem (none when it is valid)."""
    try:
        RunConfig.model_validate(data)
    except ValidationError as err:
        return [line.strip() for line in format_validation_error(err).splitlines()[1:]]
    return []


def parse_config(data: dict[str, Any] | None) -> RunConfig:
    """Validate a plain dict (from YAML, JSON or REST) into a RunConfig or raise ConfigError."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"invalid config: expected a mapping of sections, got {type(data).__name__}")
    try:
        return RunConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err)) from None


def load_config(path: str | Path) -> RunConfig:
    """Read a YAML (or JSON) config file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {path} is not valid YAML: {err}") from None
    try:
        return parse_config(data)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None
