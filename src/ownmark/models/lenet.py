"""LeNet-5 (LeCun et al. 1998, "Gradient-based learning applied to document recognition").

A small, fast second architecture: independent reference models for calibrating a key's
false-match rate should not all share the watermarked model's design, and LeNet-5 trains in a
fraction of the Zhang CNN's time. Modern form: ReLU instead of scaled tanh, max-pooling instead
of trainable subsampling, and the first convolution padded so that 28x28 inputs behave like the
paper's 32x32 ones.

==========================  =====================
layer                       output (1x28x28 input)
==========================  =====================
Conv 5x5 pad 2 (6) + ReLU   6x28x28
MaxPool 2x2                 6x14x14
Conv 5x5 (16) + ReLU        16x10x10
MaxPool 2x2                 16x5x5
Dense 120 + ReLU
Dense 84 + ReLU
Dense (logits)              num_classes
==========================  =====================
"""

from __future__ import annotations

import torch
from torch import nn

from ownmark.errors import ConfigError
from ownmark.models.registry import register_model

__all__ = ["LeNet5", "lenet5"]


class LeNet5(nn.Module):
    """LeNet-5 with ReLU and max-pooling; 61,706 parameters for 10 classes on 1x28x28."""

    def __init__(self, num_classes: int, in_channels: int, input_size: tuple[int, int]) -> None:
        super().__init__()
        h, w = ((size // 2 - 4) // 2 for size in input_size)
        if h < 1 or w < 1:
            raise ConfigError(
                f"input size {tuple(input_size)} is too small for lenet5 (needs at least 12x12)"
            )
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 6, kernel_size=5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(6, 16, kernel_size=5),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(16 * h * w, 120),
            nn.ReLU(),
            nn.Linear(120, 84),
            nn.ReLU(),
            nn.Linear(84, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.classifier(self.features(x))
        return out


@register_model("lenet5", "LeNet-5 (LeCun et al. 1998), ReLU + max-pool: conv 6,16; dense 120,84")
def lenet5(
    num_classes: int = 10, in_channels: int = 1, input_size: tuple[int, int] = (28, 28)
) -> nn.Module:
    """LeNet-5 (defaults: 10 classes, 1x28x28 input); a fast reference architecture."""
    return LeNet5(num_classes, in_channels, input_size)
