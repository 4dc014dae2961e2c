"""Building blocks the CNN families share: width scaling, 2D/3D layer choice, safe pooling, init."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F


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
