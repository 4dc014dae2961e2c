"""Carrying out a :class:`~ddray.training.spec.RecipeSpec` inside ``fit``: schedule, augmentation, precision, checks.

Kept apart from the loop so the loop reads as one epoch after another, and apart from the
spec so the spec stays a plain description that pickles to every worker.

Augmentation draws its random numbers from a generator the loop seeds per epoch, one flip
and one crop offset *per sample*, and only then moves the pixels on the device where the
batch lives. ``torchvision.transforms.v2.RandomHorizontalFlip`` / ``RandomCrop`` on a batch
tensor would draw one parameter for the whole batch (every sample flipped, or none) from
torch's global generator, which a resumed run does not restore, and importing torchvision
costs every worker over a second; the pixel work is the same as
``v2.functional.horizontal_flip`` and ``v2.functional.crop(v2.functional.pad(x, p), ...)``
(``tests/test_recipes.py`` checks that), and it works for volumes as well.
"""

from __future__ import annotations

import contextlib
from typing import ContextManager

import torch

from ddray.training.spec import AugmentSpec, RecipeSpec, SpecError

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def memory_layout(recipe: RecipeSpec, x: torch.Tensor) -> torch.memory_format | None:
    """The layout ``fit`` puts the model and the image batches in: channels-last for (N, C, H, W) and
    (N, C, D, H, W) inputs when the recipe asks for it (oneDNN's and cuDNN's faster convolutions), else None."""
    if not recipe.channels_last:
        return None
    return {4: torch.channels_last, 5: torch.channels_last_3d}.get(x.ndim)


def augment_batch(x: torch.Tensor, augment: AugmentSpec, generator: torch.Generator) -> torch.Tensor:
    """``x`` (N, C, H, W) or (N, C, D, H, W) with each sample flipped and/or shifted at random, on ``x``'s device.

    Flip mirrors the last axis. Crop pads every spatial axis by ``crop_padding`` zeros and cuts
    the original size back out at a random offset per sample. The parameters come from
    ``generator`` (CPU) in a fixed order, so a seed gives the same batches on CPU and GPU.
    """
    n, spatial = len(x), x.shape[2:]
    if augment.flip:
        flip = (torch.rand(n, generator=generator) < 0.5).to(x.device, non_blocking=True)
        x = torch.where(flip.view(n, *[1] * (x.ndim - 1)), x.flip(-1), x)
    p = augment.crop_padding
    if p > 0:
        offsets = torch.randint(0, 2 * p + 1, (n, len(spatial)), generator=generator).to(x.device, non_blocking=True)
        padded = torch.nn.functional.pad(x, [p] * (2 * len(spatial)))
        # advanced indexing: one window per sample, (N, *spatial, C) after the gather
        index: list[torch.Tensor] = [torch.arange(n, device=x.device).view(n, *[1] * len(spatial))]
        for axis, size in enumerate(spatial):
            shape = [n] + [1] * len(spatial)
            shape[axis + 1] = size
            index.append((offsets[:, axis].view(n, 1) + torch.arange(size, device=x.device)).view(shape))
        picked = padded.movedim(1, -1)[tuple(index)]
        x = picked.movedim(-1, 1).contiguous()
    return x


def make_scheduler(recipe: RecipeSpec, optimizer: torch.optim.Optimizer, epochs: int) -> torch.optim.lr_scheduler.LRScheduler | None:
    """The per-epoch lr schedule (stepped after each epoch), or None for a constant lr."""
    if recipe.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    if recipe.schedule == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=recipe.step_size, gamma=recipe.gamma)
    return None


def autocast(recipe: RecipeSpec, device: torch.device) -> ContextManager:
    """Autocast for a training step in the recipe's precision; nothing for fp32."""
    if recipe.precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=DTYPES[recipe.precision])


def grad_scaler(recipe: RecipeSpec, device: torch.device) -> torch.amp.GradScaler | None:
    """fp16 gradients underflow without loss scaling; bf16 has float32's range and needs none."""
    return torch.amp.GradScaler(device.type) if recipe.precision == "fp16" else None


def check_recipe(recipe: RecipeSpec, device: torch.device, x_train: torch.Tensor, x_val: torch.Tensor) -> None:
    """Refuse, before the first step, a recipe this input or device cannot run (the message names the key)."""
    augment = recipe.augment
    if augment.enabled:
        if x_train.ndim not in (4, 5):
            raise SpecError(
                f"training.augment works on images (N, C, H, W) or volumes (N, C, D, H, W); this input has shape "
                f"{tuple(x_train.shape)}: turn training.augment off"
            )
        side = min(x_train.shape[2:])
        if augment.crop_padding >= side:
            raise SpecError(
                f"training.augment.crop_padding {augment.crop_padding} is not smaller than the input's side {side} "
                f"(a subdomain's side when decomposed): lower it below {side}"
            )
    if recipe.early_stopping_patience is not None and len(x_val) == 0:
        raise SpecError("training.early_stopping_patience needs validation data, and this training has none: unset it")
    if recipe.precision != "fp32":
        _check_precision(recipe.precision, device)


def _check_precision(precision: str, device: torch.device) -> None:
    dtype = DTYPES[precision]
    fix = "set training.precision to fp32" + (" or fp16" if precision == "bf16" else "")
    if not torch.amp.is_autocast_available(device.type):
        raise SpecError(f"training.precision {precision}: torch has no autocast for device '{device.type}': {fix}")
    if device.type == "cuda" and dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
        raise SpecError(f"training.precision bf16: {torch.cuda.get_device_name(device)} does not support bfloat16: {fix}")
    try:  # one tiny step in that precision: fails now, not after the data has moved and an epoch has run
        w = torch.ones(2, 2, device=device, requires_grad=True)
        with torch.autocast(device.type, dtype=dtype):
            out = torch.nn.functional.conv2d(torch.ones(1, 1, 3, 3, device=device), w.view(1, 1, 2, 2)).sum()
        out.backward()
    except (RuntimeError, TypeError) as err:
        raise SpecError(f"training.precision {precision} cannot run on {device}: {err}; {fix}") from None
