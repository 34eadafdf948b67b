"""VGG-16 with batch norm (Simonyan & Zisserman 2015) in the CIFAR style.

Choices for small images, following the common CIFAR adaptation:

* configuration D: ``64,64,M,128,128,M,256,256,256,M,512,512,512,M,512,512,512,M`` with
  3x3 padded convolutions, each followed by BatchNorm and ReLU;
* ``MaxPool2d(2, ceil_mode=True)`` so that 28x28 inputs work too (28→14→7→4→2→1; 32x32
  gives 32→16→8→4→2→1 exactly as with floor pooling);
* adaptive average pooling to 1x1, then a single ``Linear(512, num_classes)`` instead of the
  ImageNet 4096-4096 head, which would add ~120M parameters for a 1x1 feature map.
"""

from __future__ import annotations

import torch
from torch import nn

from ownmark.models.registry import register_model

__all__ = ["VGG", "VGG16_CFG", "vgg16_bn"]

VGG16_CFG: tuple[int | str, ...] = (
    64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M",
)  # fmt: skip
"""VGG configuration D: numbers are conv output channels, ``"M"`` a 2x2 max-pool."""


class VGG(nn.Module):
    """VGG feature extractor with batch norm, global average pooling and a linear classifier.

    Args:
        cfg: layer configuration (see :data:`VGG16_CFG`).
        num_classes: number of output logits.
        in_channels: image channels.
    """

    def __init__(self, cfg: tuple[int | str, ...], num_classes: int, in_channels: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for item in cfg:
            if item == "M":
                # ceil_mode so odd sizes (7x7 from 28x28 inputs) are not truncated to nothing.
                layers.append(nn.MaxPool2d(2, ceil_mode=True))
            else:
                out_channels = int(item)
                layers += [
                    nn.Conv2d(channels, out_channels, 3, padding=1),
                    nn.BatchNorm2d(out_channels),
                    nn.ReLU(inplace=True),
                ]
                channels = out_channels
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(channels, num_classes)
        for module in self.modules():
            # He init for convs, unit BN, small-normal linear: the torchvision VGG scheme.
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, 0.0, 0.01)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.pool(self.features(x))
        logits: torch.Tensor = self.classifier(torch.flatten(out, 1))
        return logits


@register_model("vgg16_bn", "VGG-16 with batch norm, CIFAR style (global pool, 512->classes head)")
def vgg16_bn(
    num_classes: int = 10, in_channels: int = 3, input_size: tuple[int, int] = (32, 32)
) -> nn.Module:
    """CIFAR-style VGG-16-BN (defaults: 10 classes, 3x32x32; also works on 1x28x28).

    ``input_size`` is accepted for the factory interface only: ceil-mode pooling plus adaptive
    average pooling make the network work for any size from 1x1 up.
    """
    del input_size  # size-agnostic thanks to ceil-mode + adaptive pooling
    return VGG(VGG16_CFG, num_classes, in_channels)
