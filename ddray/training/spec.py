"""What one training is, in one validated place: model, optimizer, schedule, device request.

Local CNNs, Tune trials, the coarse DNN and the comparison models are all built
from a ``RunConfig`` by :func:`training_spec` / :func:`dnn_spec` (a Tune trial adds
its sampled overrides), so a setting is read from the config in exactly one
place. The specs are small frozen dataclasses: they pickle to Ray workers, are
saved beside the weights (:meth:`TrainingSpec.to_dict`), and check themselves on
construction, so a bad value fails with a message naming the setting to change
before any worker starts, whether it came from YAML, REST or a Tune sampler.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Iterable, Mapping

import torch

from ddray.config import TUNABLE, ConfigError, RunConfig

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("none", "cosine", "step")
PRECISIONS = ("fp32", "bf16", "fp16")
BASELINE_NAMES = ("global", "coherent", "transfer")
DNN_FIT_ON = ("train", "val")


class SpecError(ConfigError):
    """A training setting that cannot work; the message names the setting and the fix."""


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise SpecError(message)


@dataclass(frozen=True)
class ModelSpec:
    """A registered CNN family at a width, for inputs of a channel count, dimension and class count.

    ``stem`` / ``head`` are the family's options (``None``: its default; specs saved before they
    existed load with ``None``, i.e. the architecture they were trained with).
    """

    name: str
    width: float
    in_channels: int
    num_classes: int
    spatial_dims: int = 2
    stem: str | None = None
    head: str | None = None

    def __post_init__(self) -> None:
        from ddray.models import list_models
        from ddray.models.registry import check_model

        known = list_models()
        _require(self.name in known, f"unknown model '{self.name}': set local_model.name to one of {', '.join(known)}")
        _require(
            0 < self.width <= 1,
            f"model width {self.width:g} is outside (0, 1]: set local_model.width (or narrow tune.space.width) into (0, 1]",
        )
        _require(self.in_channels >= 1, f"in_channels must be >= 1, got {self.in_channels}")
        _require(self.num_classes >= 2, f"a classifier needs >= 2 classes, the data has {self.num_classes}")
        _require(self.spatial_dims in (2, 3), f"spatial_dims must be 2 (images) or 3 (volumes), got {self.spatial_dims}")
        try:
            check_model(self.name, spatial_dims=self.spatial_dims, **self.options)
        except ValueError as err:
            raise SpecError(str(err)) from None
        from ddray.models.registry import user_family

        # a family registered with register_model exists in this process only: the spec carries it
        # (outside its fields: not compared, not in to_dict) to every process that unpickles it
        object.__setattr__(self, "_family", user_family(self.name))

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        if state.get("_family") is not None:
            from ddray.models.registry import adopt_family

            adopt_family(self.name, state["_family"])

    @property
    def options(self) -> dict[str, str | None]:
        return {"stem": self.stem, "head": self.head}

    def _create_kwargs(self) -> dict[str, Any]:
        return dict(
            in_channels=self.in_channels, num_classes=self.num_classes, spatial_dims=self.spatial_dims, width=self.width, **self.options
        )

    def build(self) -> torch.nn.Module:
        from ddray.models import create_model

        return create_model(self.name, **self._create_kwargs())

    def parameter_count(self) -> int:
        """Trainable parameters of :meth:`build`'s model, counted without allocating or training it."""
        from ddray.models.registry import count_model_parameters

        return count_model_parameters(self.name, **self._create_kwargs())


@dataclass(frozen=True)
class OptimizerSpec:
    name: str = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0
    momentum: float = 0.9  # sgd only

    def __post_init__(self) -> None:
        _require(self.name in OPTIMIZERS, f"unknown optimizer '{self.name}': set training.optimizer to one of {', '.join(OPTIMIZERS)}")
        _require(self.lr > 0, f"learning rate {self.lr:g} must be > 0: set training.lr (or tune.space.lr) above 0")
        _require(self.weight_decay >= 0, f"weight_decay {self.weight_decay:g} must be >= 0: set training.weight_decay")
        _require(0 <= self.momentum < 1, f"momentum {self.momentum:g} must be in [0, 1): set training.momentum")

    def make(self, params: Iterable[torch.nn.Parameter]) -> torch.optim.Optimizer:
        if self.name == "adam":
            return torch.optim.Adam(params, lr=self.lr, weight_decay=self.weight_decay)
        if self.name == "adamw":
            return torch.optim.AdamW(params, lr=self.lr, weight_decay=self.weight_decay)
        return torch.optim.SGD(params, lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay)


@dataclass(frozen=True)
class DeviceRequest:
    """The GPU share a local training asked Ray for; whether it may fall back to CPU without one."""

    gpus: float = 0.0
    require_cuda: bool = False

    @property
    def use_gpu(self) -> bool:
        return self.gpus > 0


@dataclass(frozen=True)
class AugmentSpec:
    """Random changes to each training batch (never to validation or test data): a horizontal flip, a pad-and-crop shift."""

    flip: bool = False
    crop_padding: int = 0  # pixels of zero padding (the training mean after ddray's preprocessing) before a random crop

    def __post_init__(self) -> None:
        _require(isinstance(self.flip, bool), f"training.augment.flip must be true or false, got {self.flip!r}")
        _require(self.crop_padding >= 0, f"training.augment.crop_padding {self.crop_padding} must be >= 0 (0: no random crop)")

    @property
    def enabled(self) -> bool:
        return self.flip or self.crop_padding > 0


@dataclass(frozen=True)
class RecipeSpec:
    """How a training runs beyond the optimizer: learning-rate schedule, augmentation, precision, early stopping.

    The defaults are the plain loop (constant lr, no augmentation, float32, every epoch run) on
    channels-last tensors (``channels_last``: the faster layout for convolutions; the values
    trained are the same up to float rounding).
    """

    schedule: str = "none"
    step_size: int = 10  # schedule "step": epochs between lr decays
    gamma: float = 0.1  # schedule "step": lr factor per decay
    augment: AugmentSpec = field(default_factory=AugmentSpec)
    precision: str = "fp32"
    early_stopping_patience: int | None = None
    channels_last: bool = True

    def __post_init__(self) -> None:
        _require(self.schedule in SCHEDULES, f"unknown schedule '{self.schedule}': set training.schedule to one of {', '.join(SCHEDULES)}")
        _require(self.step_size >= 1, f"training.step_size {self.step_size} must be >= 1 (epochs between lr decays)")
        _require(0 < self.gamma <= 1, f"training.gamma {self.gamma:g} must be in (0, 1] (the lr factor per step)")
        _require(self.precision in PRECISIONS, f"unknown precision '{self.precision}': set training.precision to one of {', '.join(PRECISIONS)}")
        patience = self.early_stopping_patience
        _require(patience is None or patience >= 1, f"training.early_stopping_patience {patience} must be >= 1 epoch, or unset")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> "RecipeSpec":
        """From :meth:`TrainingSpec.to_dict`'s ``recipe``; keys missing (older runs) take the defaults."""
        data = dict(data or {})
        augment = AugmentSpec(**data.pop("augment", None) or {})
        return cls(augment=augment, **data)


@dataclass(frozen=True)
class TrainingSpec:
    """One model's training: what to build, how to optimise it, for how long, with which seed."""

    model: ModelSpec
    optimizer: OptimizerSpec = field(default_factory=OptimizerSpec)
    epochs: int = 10
    batch_size: int = 64
    seed: int = 0
    device: DeviceRequest = field(default_factory=DeviceRequest)
    checkpoint_every: int = 1  # epochs between resumable checkpoints
    recipe: RecipeSpec = field(default_factory=RecipeSpec)

    def __post_init__(self) -> None:
        _require(self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}: set training.epochs (or tune.space.epochs)")
        _require(self.checkpoint_every >= 1, f"checkpoint_every must be >= 1, got {self.checkpoint_every}: set training.checkpoint_every")
        _require(self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}: set training.batch_size (or tune.space.batch_size)")

    def with_overrides(self, overrides: Mapping[str, Any] | None) -> "TrainingSpec":
        """This spec with Tune-sampled values (keys of ``TUNABLE``) applied and validated."""
        overrides = dict(overrides or {})
        unknown = sorted(set(overrides) - set(TUNABLE))
        _require(not unknown, f"cannot override {unknown}; tunable: {', '.join(TUNABLE)}")
        model = replace(self.model, width=float(overrides["width"])) if "width" in overrides else self.model
        optimizer_changes = {k: overrides[k] for k in ("lr", "weight_decay") if k in overrides}
        if "optimizer" in overrides:
            optimizer_changes["name"] = str(overrides["optimizer"])
        optimizer = replace(self.optimizer, **optimizer_changes) if optimizer_changes else self.optimizer
        top = {k: int(overrides[k]) for k in ("epochs", "batch_size") if k in overrides}
        return replace(self, model=model, optimizer=optimizer, **top)

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (saved beside the weights; JSON- and weights_only-safe)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "TrainingSpec":
        """From :meth:`to_dict`, or from the flat ``settings`` dict that ddray 0.1 runs saved.

        Specs saved before recipes existed have no ``recipe``: they trained with the default one.
        """
        if isinstance(data.get("model"), Mapping):
            return cls(
                model=ModelSpec(**data["model"]),
                optimizer=OptimizerSpec(**data.get("optimizer", {})),
                device=DeviceRequest(**data.get("device", {})),
                recipe=RecipeSpec.from_dict(data.get("recipe")),
                **{f.name: data[f.name] for f in fields(cls) if f.name in ("epochs", "batch_size", "seed", "checkpoint_every") and f.name in data},
            )
        return cls(  # ddray 0.1 (LocalSettings / BaselineSettings fields, flat)
            model=ModelSpec(data["model"], float(data.get("width", 1.0)), int(data["in_channels"]), int(data["num_classes"]), int(data["spatial_dims"])),
            optimizer=OptimizerSpec(data.get("optimizer", "adam"), float(data["lr"]), float(data.get("weight_decay", 0.0)), float(data.get("momentum", 0.9))),
            epochs=int(data["epochs"]),
            batch_size=int(data["batch_size"]),
            seed=int(data.get("seed", 0)),
            device=DeviceRequest(float(data.get("gpus", 0.0)), bool(data.get("require_cuda", False))),
        )


@dataclass(frozen=True)
class DNNSpec:
    """The coarse dense network on the local class probabilities, and its training."""

    num_subdomains: int
    num_classes: int
    hidden: tuple[int, ...] = (64,)
    dropout: float = 0.0
    epochs: int = 60
    lr: float = 0.003
    batch_size: int = 128
    seed: int = 0
    fit_on: str = "train"  # which split's local probabilities it learns from (ddray.aggregation.train_dnn)

    def __post_init__(self) -> None:
        object.__setattr__(self, "hidden", tuple(int(h) for h in self.hidden))
        _require(self.fit_on in DNN_FIT_ON, f"aggregation.dnn.fit_on '{self.fit_on}' must be one of {', '.join(DNN_FIT_ON)}")
        _require(self.num_subdomains >= 1, f"the DNN needs >= 1 subdomain, got {self.num_subdomains}")
        _require(self.num_classes >= 2, f"a classifier needs >= 2 classes, the data has {self.num_classes}")
        _require(all(h >= 1 for h in self.hidden), f"aggregation.dnn.hidden {list(self.hidden)}: every layer size must be >= 1")
        _require(0 <= self.dropout < 1, f"aggregation.dnn.dropout {self.dropout:g} must be in [0, 1)")
        _require(self.epochs >= 1 and self.batch_size >= 1, "aggregation.dnn.epochs and batch_size must be >= 1")
        _require(self.lr > 0, f"aggregation.dnn.lr {self.lr:g} must be > 0")

    def build(self) -> torch.nn.Module:
        from ddray.models import DNNAggregator

        return DNNAggregator(self.num_subdomains, self.num_classes, hidden=list(self.hidden), dropout=self.dropout)

    @property
    def optimizer(self) -> OptimizerSpec:
        return OptimizerSpec("adam", self.lr)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["hidden"] = list(self.hidden)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "DNNSpec":
        """From :meth:`to_dict`, or from the dnn.pt of ddray 0.1 runs (DNNConfig fields + sizes)."""
        return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})


# ------------------------------------------------------------------ from a config


def training_spec(
    config: RunConfig,
    *,
    num_classes: int,
    in_channels: int,
    overrides: Mapping[str, Any] | None = None,
    baseline: str | None = None,
) -> TrainingSpec:
    """The training of a local CNN (``baseline=None``, with optional Tune ``overrides``) or of a comparison model.

    A comparison model trains with ``baselines.epochs / lr / batch_size`` where set, else ``training``'s;
    the ``global`` one is the local family at full width.
    """
    t, b = config.training, config.baselines
    if baseline is not None:
        _require(baseline in BASELINE_NAMES, f"unknown baseline '{baseline}': compare may list {', '.join(BASELINE_NAMES)}")
        _require(not overrides, "Tune overrides apply to local trainings only")
    m = config.local_model
    width = 1.0 if baseline == "global" else m.resolved_width(config.decomposition.num_subdomains)
    spec = TrainingSpec(
        model=ModelSpec(m.name, width, in_channels, num_classes, config.spatial_dims, m.stem, m.head),
        optimizer=OptimizerSpec(t.optimizer, (b.lr or t.lr) if baseline else t.lr, t.weight_decay, t.momentum),
        epochs=(b.epochs or t.epochs) if baseline else t.epochs,
        batch_size=(b.batch_size or t.batch_size) if baseline else t.batch_size,
        seed=config.seed,
        device=DeviceRequest(config.resources.gpus_per_subdomain, config.resources.require_cuda) if baseline is None else DeviceRequest(),
        checkpoint_every=t.checkpoint_every,
        recipe=recipe_spec(config),
    )
    return spec.with_overrides(overrides)


def recipe_spec(config: RunConfig) -> RecipeSpec:
    """The one recipe of a run: local CNNs, Tune trials and comparison models all train with it."""
    t = config.training
    return RecipeSpec(
        schedule=t.schedule,
        step_size=t.step_size,
        gamma=t.gamma,
        augment=AugmentSpec(t.augment.flip, t.augment.crop_padding),
        precision=t.precision,
        early_stopping_patience=t.early_stopping_patience,
        channels_last=t.channels_last,
    )


def dnn_spec(config: RunConfig, *, num_subdomains: int, num_classes: int) -> DNNSpec:
    d = config.aggregation.dnn
    return DNNSpec(num_subdomains, num_classes, tuple(d.hidden), d.dropout, d.epochs, d.lr, d.batch_size, config.seed, d.fit_on)
