"""resnet18: ResNet-18 (BasicBlock [2, 2, 2, 2], 64..512 channels), 2D or 3D.

Stems (``local_model.stem``): ``small`` (default), the CIFAR-style 3x3 conv,
stride 1, no max pool, so small tiles keep their resolution; ``imagenet``, the
original 7x7 stride-2 conv and 3x3 stride-2 max pool, for large images (a 4x
smaller feature map from the start; any size still works, axes never go below 1 px). Stride-2 3x3 convs (padding 1) and 1x1 shortcuts both give
``floor((L - 1) / 2) + 1`` px, so an axis never drops below 1 and the residual
shapes always match, for any input size.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ddray.models.blocks import batch_norm, conv_layer, global_avg_pool, init_weights, scale_channels


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int, spatial_dims: int):
        super().__init__()
        conv, bn = conv_layer(spatial_dims), batch_norm(spatial_dims)
        self.conv1 = conv(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = bn(c_out)
        self.conv2 = conv(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = bn(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(conv(c_in, c_out, 1, stride=stride, bias=False), bn(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    def __init__(self, blocks, in_channels: int, num_classes: int, spatial_dims: int, width: float = 1.0, stem: str = "small"):
        super().__init__()
        conv, bn = conv_layer(spatial_dims), batch_norm(spatial_dims)
        c = scale_channels(64, width)
        if stem == "imagenet":
            pool = {2: nn.MaxPool2d, 3: nn.MaxPool3d}[spatial_dims](3, stride=2, padding=1)
            self.stem = nn.Sequential(conv(in_channels, c, 7, stride=2, padding=3, bias=False), bn(c), nn.ReLU(inplace=True), pool)
        elif stem == "small":
            self.stem = nn.Sequential(conv(in_channels, c, 3, padding=1, bias=False), bn(c), nn.ReLU(inplace=True))
        else:
            raise ValueError(f"local_model.stem: '{stem}' is not one of small, imagenet")
        stages: list[nn.Module] = []
        for i, (base, n) in enumerate(zip((64, 128, 256, 512), blocks)):
            c_out = scale_channels(base, width)
            stage = [BasicBlock(c, c_out, 1 if i == 0 else 2, spatial_dims)]
            stage += [BasicBlock(c_out, c_out, 1, spatial_dims) for _ in range(n - 1)]
            stages.append(nn.Sequential(*stage))
            c = c_out
        self.stages = nn.Sequential(*stages)
        self.pool = global_avg_pool(spatial_dims)
        self.head = nn.Linear(c, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.flatten(self.pool(self.stages(self.stem(x))), 1))


def resnet18(*, in_channels: int, num_classes: int, spatial_dims: int, width: float = 1.0, stem: str = "small") -> nn.Module:
    return ResNet((2, 2, 2, 2), in_channels, num_classes, spatial_dims, width, stem)
