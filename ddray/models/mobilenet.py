"""mobilenet_v2: torchvision's MobileNetV2 (the papers' "future work"), 2D only.

``torchvision.models.mobilenet_v2(weights=None, width_mult=width, num_classes=K)``
with one change, its stem: the first conv takes ``in_channels`` (not 3), and
with ``local_model.stem: small`` (default) it has stride 1 instead of 2, so an
8x8 to 32x32 subimage is not halved before the first block; ``stem: imagenet``
keeps torchvision's stride 2 for large images. Stride-2 3x3 convs with padding 1
never take an axis below 1 px, so any tile size from 1 px works.

Two torchvision rules to know when comparing sizes: channel counts are rounded
to multiples of 8 (so widths below ~0.25 stop shrinking the early layers), and
the last 1x1 conv keeps 1280 channels for every width below 1 (MobileNetV2's
own choice for small models), so local MobileNets are relatively larger than
local ResNets or VGGs at the same width; results.json's ``parameters`` block
shows the resulting local/global ratio.

torchvision is imported only when a model is built (importing it costs ~1.5 s).
"""

from __future__ import annotations

import torch.nn as nn

from ddray.models.blocks import init_weights


def mobilenet_v2(*, in_channels: int, num_classes: int, spatial_dims: int, width: float = 1.0, stem: str = "small") -> nn.Module:
    if spatial_dims != 2:
        raise ValueError("mobilenet_v2 works on 2D images only; use small_cnn, vgg11 or resnet18 for 3D volumes")
    if stem not in ("small", "imagenet"):
        raise ValueError(f"local_model.stem: '{stem}' is not one of small, imagenet")
    from torchvision.models import mobilenet_v2 as torchvision_mobilenet_v2
    from torchvision.ops.misc import Conv2dNormActivation

    model = torchvision_mobilenet_v2(weights=None, width_mult=width, num_classes=num_classes)
    first = model.features[0][0]
    model.features[0] = Conv2dNormActivation(
        in_channels,
        first.out_channels,
        stride=1 if stem == "small" else 2,
        norm_layer=nn.BatchNorm2d,
        activation_layer=nn.ReLU6,
    )
    init_weights(model.features[0])  # torchvision's init for convs and BatchNorm (He, fan_out; 1 and 0)
    return model
