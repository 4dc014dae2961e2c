"""The whole job: ``RunConfig`` puts the sections together and checks what depends on several of them;
the limits; reading a config from a dict or a file."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, model_validator

from ddray.config.aggregation import AggregationConfig
from ddray.config.data import DatasetConfig, DecompositionConfig
from ddray.config.section import ConfigError, Section
from ddray.config.training import BaselinesConfig, LocalModelConfig, ResourcesConfig, TrainingConfig
from ddray.config.tune import TuneConfig
from ddray.limits import Limits, env_name


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


def read_config_file(path: str | Path) -> Any:
    """The YAML (or JSON) content of a config file, not yet validated; ConfigError names a missing or unreadable file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {path} is not valid YAML: {err}") from None


def load_config(path: str | Path) -> RunConfig:
    """Read a YAML (or JSON) config file."""
    data = read_config_file(path)
    try:
        return parse_config(data)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None
