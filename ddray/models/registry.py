"""Name -> model family registry of the local/global CNNs: what ``local_model.name`` may be.

A family has a builder and declares the spatial dimensions it supports and its options
(``local_model.stem``, ``local_model.head``: the allowed values, the first being the default,
and the dimensions each value works in); :func:`check_model` checks a request against that
before anything is built.

This module does not import torch: the config is validated with it before a run starts Ray,
and importing torch first would hold that start back by a second or more. So the built-in
families are declared here by where their builder lives (imported when a model is built);
a user's own family registers its function with :func:`register_model`.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Union

if TYPE_CHECKING:
    from torch import nn

Builder = Callable[..., "nn.Module"]


@dataclass(frozen=True)
class ModelFamily:
    """A registered family: its builder (a function, or ``"module:function"`` imported on first use),
    the spatial dimensions it supports, and option -> value -> the dimensions that value works in."""

    builder: Union[str, Builder]
    spatial_dims: tuple[int, ...] = (2, 3)
    options: dict[str, dict[str, tuple[int, ...]]] = field(default_factory=dict)

    def qualified_name(self) -> str:
        if isinstance(self.builder, str):
            return self.builder
        return f"{self.builder.__module__}:{self.builder.__qualname__}"

    def load(self) -> Builder:
        if not isinstance(self.builder, str):
            return self.builder
        module, _, name = self.builder.partition(":")
        return getattr(importlib.import_module(module), name)


_FAMILIES: dict[str, ModelFamily] = {
    "small_cnn": ModelFamily("ddray.models.small_cnn:small_cnn"),
    "vgg11": ModelFamily("ddray.models.vgg:vgg11", options={"head": {"gap": (2, 3), "classic": (2,)}}),
    "resnet18": ModelFamily("ddray.models.resnet:resnet18", options={"stem": {"small": (2, 3), "imagenet": (2, 3)}}),
    "mobilenet_v2": ModelFamily(
        "ddray.models.mobilenet:mobilenet_v2", spatial_dims=(2,), options={"stem": {"small": (2,), "imagenet": (2,)}}
    ),
}


class UnknownModelError(ValueError):
    """A model name that no builder is registered under; the message lists the known names."""


def register_model(
    name: str,
    *,
    spatial_dims: tuple[int, ...] = (2, 3),
    options: dict[str, dict[str, tuple[int, ...]]] | None = None,
) -> Callable[[Builder], Builder]:
    """Decorator: register ``fn(*, in_channels, num_classes, spatial_dims, width=1.0, **options) -> nn.Module``.

    ``options`` maps each option the builder takes to its allowed values (the first is the default)
    and the spatial dimensions each value supports, e.g. ``{"head": {"gap": (2, 3), "classic": (2,)}}``.
    """

    def decorator(fn: Builder) -> Builder:
        family = ModelFamily(fn, tuple(spatial_dims), {k: dict(v) for k, v in (options or {}).items()})
        existing = _FAMILIES.get(name)
        # re-registering the same qualified function happens on module reload; anything else is a clash
        if existing is not None and existing.qualified_name() != family.qualified_name():
            raise ValueError(f"model '{name}' is already registered by {existing.qualified_name()}")
        _FAMILIES[name] = family
        return fn

    return decorator


def user_family(name: str) -> ModelFamily | None:
    """The family registered under ``name`` with :func:`register_model`; None for a built-in or unknown name."""
    family = _FAMILIES.get(name)
    return None if family is None or isinstance(family.builder, str) else family


def adopt_family(name: str, family: ModelFamily) -> None:
    """Register ``family`` under ``name`` in this process unless the name is taken: how a user's family
    reaches the Ray workers that build it (it travels inside the spec, :class:`~ddray.training.spec.ModelSpec`)."""
    _FAMILIES.setdefault(name, family)


def list_models() -> list[str]:
    """Sorted names of all registered models, built-ins included."""
    return sorted(_FAMILIES)


def _family(name: str) -> ModelFamily:
    if name not in _FAMILIES:
        raise UnknownModelError(f"unknown model '{name}'; known models: {', '.join(sorted(_FAMILIES))}")
    return _FAMILIES[name]


def model_options(name: str) -> dict[str, tuple[str, ...]]:
    """Option name -> allowed values (the first is the default) of a registered model."""
    return {k: tuple(v) for k, v in _family(name).options.items()}


def model_dims(name: str) -> tuple[int, ...]:
    """The spatial dimensions a registered model works on: (2, 3), or (2,) for 2D-only families."""
    return _family(name).spatial_dims


def check_model(name: str, *, spatial_dims: int, **options: str | None) -> None:
    """Raise ValueError, naming the ``local_model`` key, unless ``name`` supports the dimensions and options.

    An option given as ``None`` means "the model's default" and is always fine.
    """
    family = _family(name)
    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 (images) or 3 (volumes), got {spatial_dims}")
    what = {2: "2D images", 3: "3D volumes"}
    if spatial_dims not in family.spatial_dims:
        supporting = [m for m in sorted(_FAMILIES) if spatial_dims in _FAMILIES[m].spatial_dims]
        raise ValueError(
            f"local_model.name: '{name}' supports {' and '.join(what[d] for d in family.spatial_dims)} only, "
            f"this run has {what[spatial_dims]}; use one of {', '.join(supporting)}"
        )
    declared = family.options
    for key, value in options.items():
        if value is None:
            continue
        if key not in declared:
            having = [m for m in sorted(_FAMILIES) if key in _FAMILIES[m].options]
            raise ValueError(
                f"local_model.{key} applies to {', '.join(having) or 'no model'} only, not to '{name}'; remove local_model.{key}"
            )
        if value not in declared[key]:
            raise ValueError(f"local_model.{key}: '{value}' is not one of {', '.join(declared[key])} (model '{name}')")
        if spatial_dims not in declared[key][value]:
            raise ValueError(
                f"local_model.{key}: '{value}' of '{name}' works on "
                f"{' and '.join(what[d] for d in declared[key][value])} only, this run has {what[spatial_dims]}"
            )


def create_model(
    name: str, *, in_channels: int, num_classes: int, spatial_dims: int, width: float = 1.0, **options: str | None
) -> "nn.Module":
    """Build a registered model; it returns raw logits shaped (N, num_classes).

    ``options`` are the model's declared options (e.g. ``stem="imagenet"``); ``None`` means the default.
    """
    check_model(name, spatial_dims=spatial_dims, **options)
    if in_channels < 1 or num_classes < 1:
        raise ValueError(f"in_channels and num_classes must be >= 1, got {in_channels} and {num_classes}")
    if not width > 0:
        raise ValueError(f"width must be > 0, got {width}")
    given = {k: v for k, v in options.items() if v is not None}
    return _FAMILIES[name].load()(in_channels=in_channels, num_classes=num_classes, spatial_dims=spatial_dims, width=width, **given)


def count_parameters(model: "nn.Module") -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def count_model_parameters(name: str, **kwargs) -> int:
    """Trainable parameters of ``create_model(name, **kwargs)``, built on the meta device: no memory, no training
    (the global model's size for the local/global ratio, even for VGG's 120M-parameter classic head)."""
    import torch

    with torch.device("meta"):
        return count_parameters(create_model(name, **kwargs))
