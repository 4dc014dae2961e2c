"""vgg11: VGG-11 conv stacks (64..512 channels) with BatchNorm, 2D or 3D.

Pooling is ``SafeMaxPool`` and the head follows a global average pool, so
tiles of any size >= 4 px work, unlike the fixed 224 px / 7x7 original.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ddray.models.registry import (
    SafeMaxPool,
    batch_norm,
    conv_layer,
    global_avg_pool,
    init_weights,
    register_model,
    scale_channels,
)

VGG11 = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")


class VGG(nn.Module):
    def __init__(self, cfg, in_channels: int, num_classes: int, spatial_dims: int, width: float = 1.0):
        super().__init__()
        conv, bn = conv_layer(spatial_dims), batch_norm(spatial_dims)
        layers: list[nn.Module] = []
        c_in = in_channels
        for item in cfg:
            if item == "M":
                layers.append(SafeMaxPool(spatial_dims))
                continue
            c_out = scale_channels(item, width)
            layers += [conv(c_in, c_out, 3, padding=1, bias=False), bn(c_out), nn.ReLU(inplace=True)]
            c_in = c_out
        self.features = nn.Sequential(*layers)
        self.pool = global_avg_pool(spatial_dims)
        hidden = scale_channels(512, width)
        # Small head: the 4096-wide original would dominate the parameter count on tiny tiles.
        self.classifier = nn.Sequential(nn.Linear(c_in, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, num_classes))
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


@register_model("vgg11")
def vgg11(*, in_channels: int, num_classes: int, spatial_dims: int, width: float = 1.0) -> nn.Module:
    return VGG(VGG11, in_channels, num_classes, spatial_dims, width)
