"""One configuration schema for the CLI, the Python API and the REST service.

Every section forbids unknown keys, so a typo fails with the field's name
before any data is read or any Ray worker starts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ddray.limits import Limits, env_name


class ConfigError(ValueError):
    """A configuration that cannot run; the message names the field and the fix."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


FOLDER_SOURCES = ("mnist", "fashion_mnist", "kmnist", "cifar10", "cifar100", "imagefolder", "volumefolder")


class DatasetConfig(_Section):
    """Where the images come from (docs/data.md). Paths are read on the driver only.

    ``root`` and ``path`` are one setting under two spellings: ``root`` (torchvision's word)
    for the folder of a folder source, ``path`` for the npz file; either is accepted for any
    source, giving both is an error. It is stored (and dumped) as ``path``.
    """

    source: Literal[
        "digits", "npz", "synthetic", "mnist", "fashion_mnist", "kmnist", "cifar10", "cifar100", "imagefolder",
        "volumefolder",
    ] = "digits"
    path: str | None = Field(
        None,
        validation_alias=AliasChoices("path", "root"),
        description="dataset.root: the folder of mnist / fashion_mnist / kmnist / cifar10 / cifar100 / imagefolder / "
        "volumefolder; dataset.path: the file of npz (one setting, two spellings)",
    )
    validation_fraction: float = Field(0.1, gt=0.0, lt=0.5)
    test_fraction: float = Field(0.2, gt=0.0, lt=0.5, description="used when the source has no test split")
    image_size: list[int] | None = Field(None, description="resize 2D images to [H, W] (not volumes)")
    limit: int | None = Field(None, gt=0, description="use only the first N samples (quick experiments)")
    # synthetic generator parameters
    kind: Literal["count", "blobs"] = "count"
    samples: int = Field(600, gt=0)
    size: list[int] = Field(default_factory=lambda: [16, 16], description="[H, W] or [D, H, W] (synthetic)")
    cells: list[int] | None = Field(None, description="cells of the 'count' generator; default: the decomposition grid")
    classes: int = Field(4, ge=2, description="number of classes (synthetic 'blobs')")
    channels: int = Field(1, ge=1, le=16)

    @model_validator(mode="before")
    @classmethod
    def _one_spelling(cls, data: Any) -> Any:
        if isinstance(data, dict) and "root" in data and "path" in data:
            raise ValueError("dataset.root and dataset.path are one setting; give only one (root for a folder, path for a file)")
        return data

    @property
    def path_key(self) -> str:
        """The key messages name: dataset.root for folder sources, dataset.path for a file."""
        return "dataset.root" if self.source in FOLDER_SOURCES else "dataset.path"

    @model_validator(mode="after")
    def _path_needed(self) -> "DatasetConfig":
        if self.source in (*FOLDER_SOURCES, "npz") and not self.path:
            what = "the .npz file" if self.source == "npz" else "the data folder"
            raise ValueError(f"{self.path_key} is required for source '{self.source}': {what} (see docs/data.md)")
        if len(self.size) not in (2, 3):
            raise ValueError("dataset.size must be [H, W] or [D, H, W]")
        return self


class DecompositionConfig(_Section):
    """How every input is cut into subimages (2D) or subvolumes (3D)."""

    grid: list[int] = Field(default_factory=lambda: [2, 2], description="[rows, cols] or [d, h, w]")
    overlap: int = Field(0, ge=0, description="pixels shared by neighbouring subdomains")

    @field_validator("grid")
    @classmethod
    def _grid_shape(cls, grid: list[int]) -> list[int]:
        if len(grid) not in (2, 3):
            raise ValueError("grid must have 2 entries [rows, cols] for images or 3 [d, h, w] for volumes")
        if any(g < 1 for g in grid):
            raise ValueError("every grid entry must be >= 1")
        return grid

    @property
    def num_subdomains(self) -> int:
        n = 1
        for g in self.grid:
            n *= g
        return n


class LocalModelConfig(_Section):
    """The local CNNs' family (the global baseline is the same family at width 1); options are checked
    against the family by ``RunConfig`` (they may depend on the dimensions), see docs/models.md."""

    name: str = "small_cnn"
    width: Annotated[float, Field(gt=0.0, le=1.0)] | Literal["auto"] = Field(
        0.5,
        description="fraction of the global model's channels; 'auto': 1/sqrt(subdomains), so that the local CNNs "
        "together have about the global model's parameters (results.json 'parameters' gives the ratio)",
    )
    stem: Literal["small", "imagenet"] | None = Field(
        None, description="resnet18, mobilenet_v2: 'small' (default: stride 1, for small subimages) or 'imagenet' (large images)"
    )
    head: Literal["gap", "classic"] | None = Field(
        None, description="vgg11: 'gap' (default: global average pool, small classifier) or 'classic' (7x7, 4096-4096; 2D)"
    )

    @field_validator("name")
    @classmethod
    def _known_model(cls, name: str) -> str:
        from ddray.models.registry import list_models

        known = list_models()
        if name not in known:
            raise ValueError(f"unknown model '{name}'; known models: {', '.join(known)}")
        return name

    @field_validator("width", mode="before")
    @classmethod
    def _width_or_auto(cls, width: Any) -> Any:
        if width == "auto":
            return width
        try:
            value = float(width) if not isinstance(width, bool) else None
        except (TypeError, ValueError):
            value = None
        if value is None or not 0 < value <= 1:  # NaN fails here too
            raise ValueError(f"{width!r} is neither a number in (0, 1] nor 'auto'")
        return value

    def resolved_width(self, num_subdomains: int) -> float:
        """The width the local CNNs are built with: the configured one, or for 'auto' 1/sqrt(N) in (0, 1]."""
        if self.width != "auto":
            return float(self.width)
        return min(1.0, round(1.0 / num_subdomains**0.5, 4))


class AugmentConfig(_Section):
    """Random changes to each training batch, drawn per sample from the run's seed; validation and test data are never changed."""

    flip: bool = Field(False, description="mirror a random half of the samples left-right (the last axis)")
    crop_padding: int = Field(
        0, ge=0, description="pad every side by this many pixels, then crop a random window of the original size (CIFAR: 4)"
    )


class TrainingConfig(_Section):
    """How local CNNs, comparison models and Tune trials train (recipe keys: docs/recipes.md)."""

    epochs: int = Field(10, ge=1)
    batch_size: int = Field(64, ge=1)
    lr: float = Field(0.003, gt=0.0)
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    weight_decay: float = Field(0.0, ge=0.0)
    momentum: float = Field(0.9, ge=0.0, lt=1.0, description="sgd only")
    checkpoint_every: int = Field(
        1, ge=1, description="epochs between resumable checkpoints of a local CNN (a restarted worker redoes at most "
        "checkpoint_every - 1 epochs); raise it when checkpoints go to a bucket and epochs are short"
    )
    schedule: Literal["none", "cosine", "step"] = Field(
        "none", description="learning rate per epoch: constant, cosine annealing to 0 over the epochs, or step decay"
    )
    step_size: int = Field(10, ge=1, description="schedule 'step': epochs between decays")
    gamma: float = Field(0.1, gt=0.0, le=1.0, description="schedule 'step': factor applied to the lr at each decay")
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    precision: Literal["fp32", "bf16", "fp16"] = Field(
        "fp32", description="training steps under autocast in bf16 or fp16 (fp16 with a gradient scaler); evaluation stays float32"
    )
    early_stopping_patience: int | None = Field(
        None, ge=1, description="stop after this many epochs without a better validation accuracy (the best epoch's weights are kept)"
    )


class DNNConfig(_Section):
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


class AggregationConfig(_Section):
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


class ResourcesConfig(_Section):
    cpus_per_subdomain: float = Field(1.0, gt=0.0)
    gpus_per_subdomain: float = Field(0.0, ge=0.0, description="fractional values share one GPU, e.g. 0.25")
    max_retries: int = Field(2, ge=0, description="restarts of a dead subdomain worker, resumed from its checkpoint")
    num_workers: int = Field(1, ge=1, description="Ray Train workers for the global / coherent baselines")
    max_runtime_s: float | None = Field(
        None, gt=0, description="the REST service stops the job after this many seconds (its DDRAY_MAX_JOB_SECONDS caps it)"
    )
    require_cuda: bool = Field(
        False,
        description=(
            "with gpus_per_subdomain > 0: fail a subdomain whose worker sees no CUDA device instead of training it "
            "on CPU (the default falls back to CPU with a warning in the job log; results.json local[i].device "
            "says where each subdomain trained)"
        ),
    )

    @field_validator("gpus_per_subdomain")
    @classmethod
    def _gpu_fraction(cls, gpus: float) -> float:
        if gpus > 1 and gpus != int(gpus):
            raise ValueError("gpus_per_subdomain above 1 must be a whole number (e.g. 2), below 1 a fraction (e.g. 0.25)")
        return gpus

    @model_validator(mode="after")
    def _cuda_needs_gpu(self) -> "ResourcesConfig":
        if self.require_cuda and self.gpus_per_subdomain == 0:
            raise ValueError("require_cuda: true needs gpus_per_subdomain > 0 (e.g. 0.5); or drop require_cuda")
        return self


class BaselinesConfig(_Section):
    """Training of the comparison models named in ``compare``; unset fields follow ``training``."""

    epochs: int | None = Field(None, ge=1)
    lr: float | None = Field(None, gt=0.0)
    batch_size: int | None = Field(None, ge=1, description="global batch, split over resources.num_workers")
    transfer_init: Literal["locals", "locals_and_dnn"] = Field(
        "locals",
        description="the transfer model's start: the trained local CNNs with a fresh DNN (the papers' wording), or "
        "the local CNNs and the trained DNN (needs 'dnn' in aggregation.methods)",
    )


class SearchSpaceEntry(_Section):
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


class TuneConfig(_Section):
    """Per-subdomain hyperparameter search with Ray Tune."""

    num_samples: int = Field(2, ge=1)
    search_alg: Literal["random", "optuna"] = "random"
    scheduler: Literal["none", "asha"] = "none"
    space: dict[str, SearchSpaceEntry] = Field(default_factory=dict)
    max_concurrent_trials: int | None = Field(None, ge=1)
    metric: Literal["val_accuracy", "val_loss"] = "val_accuracy"
    grace_period: int = Field(1, ge=1, description="ASHA: epochs before a trial may be stopped")

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
    def _optuna_no_grid(self) -> "TuneConfig":
        if self.search_alg == "optuna" and any(e.grid is not None for e in self.space.values()):
            raise ValueError("search_alg 'optuna' cannot sample a 'grid' entry; use choice instead")
        return self


class RunConfig(_Section):
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
