"""Weight quantisation: round every convolution/linear weight tensor to ``2**bits`` levels.

Each weight tensor (the same tensors as :func:`~ownmark.attacks.prune.prunable_weights`:
conv and linear weights, not biases or batch-norm parameters) is quantised on its own,
*asymmetrically*: ``2**bits`` evenly spaced levels from the tensor's minimum to its maximum,
both of which are levels, and every weight is rounded to the nearest one. Afterwards a tensor
holds at most ``2**bits`` distinct values and no weight moved by more than half a step,
``(max - min) / (2**bits - 1) / 2``. A constant tensor is left as it is. This is simulated
("fake") quantisation: the values stay floats, so the model runs unchanged.

Example::

    quantized = Quantization(bits=4)(model)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ownmark.attacks.base import Attack, AttackConfig, AttackData, register_attack
from ownmark.attacks.prune import prunable_weights
from ownmark.errors import ConfigError


def quantize_tensor(weight: torch.Tensor, bits: int) -> None:
    """Round ``weight`` in place to ``2**bits`` uniform levels over its own [min, max]."""
    with torch.no_grad():
        low = weight.min()
        high = weight.max()
        if not bool(high > low):
            return
        step = (high - low) / (2**bits - 1)
        levels = torch.round((weight - low) / step).clamp_(0, 2**bits - 1)
        weight.copy_(low + levels * step)


@dataclass(frozen=True)
class QuantizeConfig(AttackConfig):
    """Parameters of :class:`Quantization` (``seed`` is unused: the attack is deterministic).

    Attributes:
        bits: bits per weight, 2..16 (default 8): ``2**bits`` levels per tensor.
    """

    bits: int = 8

    def __post_init__(self) -> None:
        if not 2 <= self.bits <= 16:
            raise ConfigError(f"bits must lie in 2..16, got {self.bits}")


@register_attack
class Quantization(Attack[QuantizeConfig]):
    """Quantise each conv/linear weight tensor to ``2**bits`` levels over its [min, max]."""

    name = "quantize"
    summary = "uniform per-tensor weight quantisation to 2**bits levels (8 or 4 bits)"
    config_class = QuantizeConfig

    def apply(self, model: nn.Module, data: AttackData) -> nn.Module:
        weights = prunable_weights(model)
        if not weights:
            raise ConfigError("the model has no convolution or linear layers to quantize")
        for _, weight in weights:
            quantize_tensor(weight, self.config_values.bits)
        return model
