"""small_cnn: three conv-BN-ReLU blocks, fast enough to train many local models on CPU."""

from __future__ import annotations

import torch
import torch.nn as nn

from ddray.models.blocks import SafeMaxPool, batch_norm, conv_layer, global_avg_pool, init_weights, scale_channels

CHANNELS = (32, 64, 128)


class SmallCNN(nn.Module):
    def __init__(self, in_channels: int, num_classes: int, spatial_dims: int, width: float = 1.0):
        super().__init__()
        conv, bn = conv_layer(spatial_dims), batch_norm(spatial_dims)
        layers: list[nn.Module] = []
        c_in = in_channels
        for i, c in enumerate(CHANNELS):
            c_out = scale_channels(c, width)
            layers += [conv(c_in, c_out, 3, padding=1, bias=False), bn(c_out), nn.ReLU(inplace=True)]
            if i < len(CHANNELS) - 1:  # pool between blocks only: keeps 4 px tiles informative
                layers.append(SafeMaxPool(spatial_dims))
            c_in = c_out
        self.features = nn.Sequential(*layers)
        self.pool = global_avg_pool(spatial_dims)
        self.head = nn.Linear(c_in, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.flatten(self.pool(self.features(x)), 1))


def small_cnn(*, in_channels: int, num_classes: int, spatial_dims: int, width: float = 1.0) -> nn.Module:
    return SmallCNN(in_channels, num_classes, spatial_dims, width)
