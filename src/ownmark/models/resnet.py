"""ResNet-18 in the CIFAR style (He et al. 2016, as commonly adapted for 32x32 images).

Differences from the ImageNet ResNet-18: the stem is a single 3x3 convolution with stride 1 and
there is no max-pool, because small images (28x28, 32x32) would otherwise shrink to 1x1 far too
early. The rest is standard: BasicBlocks ``[2, 2, 2, 2]`` with 64/128/256/512 channels (stride 2
at the start of stages 2-4), batch norm, global average pooling and one linear layer.
"""

from __future__ import annotations

import torch
from torch import nn

from ownmark.models.registry import register_model

__all__ = ["BasicBlock", "ResNet", "resnet18"]


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with an identity (or 1x1 conv-BN projection) shortcut."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        result: torch.Tensor = self.relu(out + self.shortcut(x))
        return result


class ResNet(nn.Module):
    """CIFAR-style ResNet built from :class:`BasicBlock` stages.

    Args:
        blocks: number of blocks per stage (ResNet-18: ``(2, 2, 2, 2)``).
        num_classes: number of output logits.
        in_channels: image channels.
        widths: channels per stage (default ``(64, 128, 256, 512)``).
    """

    def __init__(
        self,
        blocks: tuple[int, ...],
        num_classes: int,
        in_channels: int,
        widths: tuple[int, ...] = (64, 128, 256, 512),
    ) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, widths[0], 3, stride=1, padding=1, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(inplace=True),
        )
        stages: list[nn.Module] = []
        in_planes = widths[0]
        for index, (count, planes) in enumerate(zip(blocks, widths, strict=True)):
            stride = 1 if index == 0 else 2
            layers: list[nn.Module] = []
            for block_index in range(count):
                layers.append(BasicBlock(in_planes, planes, stride if block_index == 0 else 1))
                in_planes = planes
            stages.append(nn.Sequential(*layers))
        self.layers = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_planes, num_classes)
        for module in self.modules():
            # He init for convs and unit BN, as in torchvision; Linear keeps torch's default.
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layers(self.stem(x))
        logits: torch.Tensor = self.fc(torch.flatten(self.pool(out), 1))
        return logits


@register_model("resnet18", "ResNet-18, CIFAR style (3x3 stem, no max-pool), 11M parameters")
def resnet18(
    num_classes: int = 10, in_channels: int = 3, input_size: tuple[int, int] = (32, 32)
) -> nn.Module:
    """CIFAR-style ResNet-18 (defaults: 10 classes, 3x32x32; also works on 1x28x28).

    ``input_size`` is accepted for the factory interface only: global average pooling makes the
    network independent of the image size.
    """
    del input_size  # size-agnostic thanks to adaptive pooling
    return ResNet((2, 2, 2, 2), num_classes, in_channels)
