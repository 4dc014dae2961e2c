"""Name -> builder registry of the local/global CNNs, plus the building blocks they share.

Builders are looked up by the name in ``local_model.name``. A family may
declare options (``local_model.stem``, ``local_model.head``: the allowed values,
the first being the default, and the dimensions each value works in) and the
spatial dimensions it supports; :func:`check_model` checks a request against
that before anything is built. The built-in families (small_cnn, vgg, resnet,
mobilenet) are imported lazily by ``_load_builtin`` so
that importing only this module (as ``ddray.config`` does) still lists every
model, without an import cycle: the family modules import ``register_model``
from here, never the other way round at import time.
"""

from __future__ import annotations

import importlib
from typing import Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

Builder = Callable[..., nn.Module]

_BUILDERS: dict[str, Builder] = {}
_DIMS: dict[str, tuple[int, ...]] = {}
_OPTIONS: dict[str, dict[str, dict[str, tuple[int, ...]]]] = {}  # model -> option -> value -> dims it works in
_BUILTIN_MODULES = ("ddray.models.small_cnn", "ddray.models.vgg", "ddray.models.resnet", "ddray.models.mobilenet")
_builtin_loaded = False


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
        existing = _BUILDERS.get(name)
        if existing is not None and existing is not fn:
            # Re-registering the same qualified function happens on module reload; anything else is a clash.
            if (existing.__module__, existing.__qualname__) != (fn.__module__, fn.__qualname__):
                raise ValueError(f"model '{name}' is already registered by {existing.__module__}.{existing.__qualname__}")
        _BUILDERS[name] = fn
        _DIMS[name] = tuple(spatial_dims)
        _OPTIONS[name] = {k: dict(v) for k, v in (options or {}).items()}
        return fn

    return decorator


def _load_builtin() -> None:
    """Import the built-in families once so their ``@register_model`` decorators run."""
    global _builtin_loaded
    if _builtin_loaded:
        return
    for module in _BUILTIN_MODULES:
        importlib.import_module(module)
    _builtin_loaded = True


def list_models() -> list[str]:
    """Sorted names of all registered models, built-ins included."""
    _load_builtin()
    return sorted(_BUILDERS)


def model_options(name: str) -> dict[str, tuple[str, ...]]:
    """Option name -> allowed values (the first is the default) of a registered model."""
    _load_builtin()
    if name not in _BUILDERS:
        raise UnknownModelError(f"unknown model '{name}'; known models: {', '.join(sorted(_BUILDERS))}")
    return {k: tuple(v) for k, v in _OPTIONS[name].items()}


def model_dims(name: str) -> tuple[int, ...]:
    """The spatial dimensions a registered model works on: (2, 3), or (2,) for 2D-only families."""
    _load_builtin()
    if name not in _BUILDERS:
        raise UnknownModelError(f"unknown model '{name}'; known models: {', '.join(sorted(_BUILDERS))}")
    return _DIMS[name]


def check_model(name: str, *, spatial_dims: int, **options: str | None) -> None:
    """Raise ValueError, naming the ``local_model`` key, unless ``name`` supports the dimensions and options.

    An option given as ``None`` means "the model's default" and is always fine.
    """
    _load_builtin()
    if name not in _BUILDERS:
        raise UnknownModelError(f"unknown model '{name}'; known models: {', '.join(sorted(_BUILDERS))}")
    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 (images) or 3 (volumes), got {spatial_dims}")
    what = {2: "2D images", 3: "3D volumes"}
    if spatial_dims not in _DIMS[name]:
        supporting = [m for m in sorted(_BUILDERS) if spatial_dims in _DIMS[m]]
        raise ValueError(
            f"local_model.name: '{name}' supports {' and '.join(what[d] for d in _DIMS[name])} only, "
            f"this run has {what[spatial_dims]}; use one of {', '.join(supporting)}"
        )
    declared = _OPTIONS[name]
    for key, value in options.items():
        if value is None:
            continue
        if key not in declared:
            having = [m for m in sorted(_BUILDERS) if key in _OPTIONS[m]]
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
) -> nn.Module:
    """Build a registered model; it returns raw logits shaped (N, num_classes).

    ``options`` are the model's declared options (e.g. ``stem="imagenet"``); ``None`` means the default.
    """
    check_model(name, spatial_dims=spatial_dims, **options)
    if in_channels < 1 or num_classes < 1:
        raise ValueError(f"in_channels and num_classes must be >= 1, got {in_channels} and {num_classes}")
    if not width > 0:
        raise ValueError(f"width must be > 0, got {width}")
    given = {k: v for k, v in options.items() if v is not None}
    return _BUILDERS[name](in_channels=in_channels, num_classes=num_classes, spatial_dims=spatial_dims, width=width, **given)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def count_model_parameters(name: str, **kwargs) -> int:
    """Trainable parameters of ``create_model(name, **kwargs)``, built on the meta device: no memory, no training
    (the global model's size for the local/global ratio, even for VGG's 120M-parameter classic head)."""
    with torch.device("meta"):
        return count_parameters(create_model(name, **kwargs))


# --- building blocks shared by the families -------------------------------------------------


def scale_channels(channels: int, width: float) -> int:
    """Channel count of a width-scaled model: local models are proportionally smaller."""
    return max(1, round(channels * width))


def conv_layer(spatial_dims: int) -> type[nn.Module]:
    return {2: nn.Conv2d, 3: nn.Conv3d}[spatial_dims]


def batch_norm(spatial_dims: int) -> type[nn.Module]:
    return {2: nn.BatchNorm2d, 3: nn.BatchNorm3d}[spatial_dims]


def global_avg_pool(spatial_dims: int) -> nn.Module:
    return {2: nn.AdaptiveAvgPool2d, 3: nn.AdaptiveAvgPool3d}[spatial_dims](1)


class SafeMaxPool(nn.Module):
    """2x max pooling that never shrinks an axis below 1 px.

    Tiles can be as small as 4 px per axis and odd-sized, so each axis pools
    with kernel/stride ``min(2, side)`` and ``ceil_mode`` (a 5 px side gives 3,
    a 1 px side stays 1).
    """

    def __init__(self, spatial_dims: int):
        super().__init__()
        self.spatial_dims = spatial_dims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kernel: Sequence[int] = tuple(min(2, side) for side in x.shape[-self.spatial_dims :])
        if all(k == 1 for k in kernel):
            return x
        pool = F.max_pool2d if self.spatial_dims == 2 else F.max_pool3d
        return pool(x, kernel, kernel, ceil_mode=True)

    def extra_repr(self) -> str:
        return f"spatial_dims={self.spatial_dims}"


def init_weights(model: nn.Module) -> None:
    """He init for convs, unit/zero BatchNorm (the usual choice for ReLU CNNs trained from scratch)."""
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Conv3d)):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm3d)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
