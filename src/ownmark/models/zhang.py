"""The two CNNs of Zhang et al. 2018, "Protecting Intellectual Property of Deep Neural Networks
with Watermarking" (AsiaCCS '18), Appendix Table 6.

They are the Carlini–Wagner networks ("Towards Evaluating the Robustness of Neural Networks",
S&P 2017, Table 1), reproduced here from the original Keras code (``train_models.py`` of
``carlini/nn_robust_attacks``):

==========================  ===============  =================
layer                       ``zhang_mnist``  ``zhang_cifar10``
==========================  ===============  =================
Conv 3x3 + ReLU             32               64
Conv 3x3 + ReLU             32               64
MaxPool 2x2
Conv 3x3 + ReLU             64               128
Conv 3x3 + ReLU             64               128
MaxPool 2x2
Dense + ReLU (+ Dropout)    200              256
Dense + ReLU                200              256
Dense (logits)              10               10
==========================  ===============  =================

Convolutions are unpadded ("valid", the Keras default): 28→26→24→12→10→8→4 for MNIST (flatten
64·4·4 = 1024), 32→30→28→14→12→10→5 for CIFAR-10 (flatten 128·5·5 = 3200). The softmax of
Table 6 is left to the loss, so the networks return logits.

Training parameters (Table 7, used by the trainer, not here): SGD, learning rate 0.01,
batch size 128, 50 epochs, dropout 0.5. Table 7 gives the dropout rate but not where it goes;
we follow the original Keras code, which has a single ``Dropout(0.5)`` after the first hidden
dense layer (``Dense -> ReLU -> Dropout(0.5) -> Dense -> ReLU -> Dense``).

Weights use Keras' default initialisation (Glorot-uniform kernels, zero biases) to stay close
to the original training setup.
"""

from __future__ import annotations

import torch
from torch import nn

from ownmark.errors import ConfigError
from ownmark.models.registry import register_model

__all__ = ["ZhangCNN", "zhang_cifar10", "zhang_mnist"]


def _valid_conv_pool_size(size: int) -> int:
    """Spatial size after conv3x3, conv3x3, maxpool2 (all unpadded, floor like Keras)."""
    return (size - 4) // 2


class ZhangCNN(nn.Module):
    """Carlini–Wagner style CNN: 2x(conv, conv, pool), then 3 dense layers.

    Args:
        conv_channels: output channels of the four 3x3 convolutions.
        dense_widths: widths of the two hidden dense layers.
        num_classes: number of output logits (default in both paper models: 10).
        in_channels: image channels (MNIST: 1, CIFAR-10: 3).
        input_size: image ``(H, W)``; must be at least 16x16 so that the feature map stays
            non-empty (MNIST: 28x28, CIFAR-10: 32x32).
        dropout: dropout rate after the first hidden dense layer (Table 7: 0.5).

    Attributes:
        features: the convolutional part (``nn.Sequential``).
        classifier: flatten + dense part (``nn.Sequential``).
        flat_features: length of the flattened feature vector.
    """

    def __init__(
        self,
        conv_channels: tuple[int, int, int, int],
        dense_widths: tuple[int, int],
        num_classes: int,
        in_channels: int,
        input_size: tuple[int, int],
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        h = _valid_conv_pool_size(_valid_conv_pool_size(input_size[0]))
        w = _valid_conv_pool_size(_valid_conv_pool_size(input_size[1]))
        if h < 1 or w < 1:
            raise ConfigError(
                f"input size {tuple(input_size)} is too small for this network "
                "(unpadded convolutions need at least 16x16)"
            )
        c1, c2, c3, c4 = conv_channels
        d1, d2 = dense_widths
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, c1, kernel_size=3),
            nn.ReLU(),
            nn.Conv2d(c1, c2, kernel_size=3),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(c2, c3, kernel_size=3),
            nn.ReLU(),
            nn.Conv2d(c3, c4, kernel_size=3),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.flat_features = c4 * h * w
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(self.flat_features, d1),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(d1, d2),
            nn.ReLU(),
            nn.Linear(d2, num_classes),
        )
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                # Keras defaults (glorot_uniform kernel, zeros bias), as in the original code.
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.classifier(self.features(x))
        return out


@register_model(
    "zhang_mnist", "Zhang et al. 2018 MNIST CNN (C-W net): conv 32,32,64,64; dense 200,200"
)
def zhang_mnist(
    num_classes: int = 10, in_channels: int = 1, input_size: tuple[int, int] = (28, 28)
) -> nn.Module:
    """Zhang et al. 2018, Table 6, MNIST model (defaults: 10 classes, 1x28x28 input).

    Conv3x3(32)-ReLU, Conv3x3(32)-ReLU, MaxPool2, Conv3x3(64)-ReLU, Conv3x3(64)-ReLU, MaxPool2,
    Dense(200)-ReLU-Dropout(0.5), Dense(200)-ReLU, Dense(num_classes). 312,202 parameters at
    the defaults.
    """
    return ZhangCNN((32, 32, 64, 64), (200, 200), num_classes, in_channels, input_size)


@register_model(
    "zhang_cifar10", "Zhang et al. 2018 CIFAR-10 CNN (C-W net): conv 64,64,128,128; dense 256,256"
)
def zhang_cifar10(
    num_classes: int = 10, in_channels: int = 3, input_size: tuple[int, int] = (32, 32)
) -> nn.Module:
    """Zhang et al. 2018, Table 6, CIFAR-10 model (defaults: 10 classes, 3x32x32 input).

    Conv3x3(64)-ReLU, Conv3x3(64)-ReLU, MaxPool2, Conv3x3(128)-ReLU, Conv3x3(128)-ReLU,
    MaxPool2, Dense(256)-ReLU-Dropout(0.5), Dense(256)-ReLU, Dense(num_classes). 1,147,978
    parameters at the defaults.
    """
    return ZhangCNN((64, 64, 128, 128), (256, 256), num_classes, in_channels, input_size)
