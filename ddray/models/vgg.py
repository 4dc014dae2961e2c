"""vgg11: VGG-11 conv stacks (64..512 channels) with BatchNorm, 2D or 3D.

Pooling is ``SafeMaxPool``, so tiles of any size work. Heads (``local_model.head``):
``gap`` (default), a global average pool and a small two-layer classifier
(512 x width hidden units); ``classic``, torchvision's VGG classifier: adaptive
average pool to 7x7, then 4096 -> 4096 -> classes with dropout 0.5 (4096 x width
units; 2D only, the 7x7x7 version would hold ~0.7 billion parameters). At full
width the classic head alone has ~120M parameters.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ddray.models.blocks import SafeMaxPool, batch_norm, conv_layer, global_avg_pool, init_weights, scale_channels

VGG11 = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")


class VGG(nn.Module):
    def __init__(self, cfg, in_channels: int, num_classes: int, spatial_dims: int, width: float = 1.0, head: str = "gap"):
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
        if head == "classic" and spatial_dims == 2:
            self.pool = nn.AdaptiveAvgPool2d(7)  # small tiles are upsampled to 7x7, as torchvision does
            hidden = scale_channels(4096, width)
            self.classifier = nn.Sequential(
                nn.Linear(c_in * 49, hidden), nn.ReLU(inplace=True), nn.Dropout(0.5),
                nn.Linear(hidden, hidden), nn.ReLU(inplace=True), nn.Dropout(0.5),
                nn.Linear(hidden, num_classes),
            )
        elif head == "gap":
            self.pool = global_avg_pool(spatial_dims)
            hidden = scale_channels(512, width)
            # Small head: the 4096-wide original would dominate the parameter count on tiny tiles.
            self.classifier = nn.Sequential(nn.Linear(c_in, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, num_classes))
        else:
            raise ValueError(f"local_model.head: '{head}' is not one of gap, classic (classic: 2D only)")
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


def vgg11(*, in_channels: int, num_classes: int, spatial_dims: int, width: float = 1.0, head: str = "gap") -> nn.Module:
    return VGG(VGG11, in_channels, num_classes, spatial_dims, width, head)
