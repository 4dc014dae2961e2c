"""The ``local_model``, ``training``, ``resources`` and ``baselines`` sections: what trains, how, on what."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from ddray.config.section import Section


class LocalModelConfig(Section):
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


class AugmentConfig(Section):
    """Random changes to each training batch, drawn per sample from the run's seed; validation and test data are never changed."""

    flip: bool = Field(False, description="mirror a random half of the samples left-right (the last axis)")
    crop_padding: int = Field(
        0, ge=0, description="pad every side by this many pixels, then crop a random window of the original size (CIFAR: 4)"
    )


class TrainingConfig(Section):
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
    channels_last: bool = Field(
        True, description="convolutions on channels-last tensors (NHWC, NDHWC): 13-40 % faster on CPU for every family "
        "(docs/recipes.md), and the layout GPU tensor cores use; false: PyTorch's default layout"
    )


class ResourcesConfig(Section):
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


class BaselinesConfig(Section):
    """Training of the comparison models named in ``compare``; unset fields follow ``training``."""

    epochs: int | None = Field(None, ge=1)
    lr: float | None = Field(None, gt=0.0)
    batch_size: int | None = Field(None, ge=1, description="global batch, split over resources.num_workers")
    transfer_init: Literal["locals", "locals_and_dnn"] = Field(
        "locals",
        description="the transfer model's start: the trained local CNNs with a fresh DNN (the papers' wording), or "
        "the local CNNs and the trained DNN (needs 'dnn' in aggregation.methods)",
    )
