"""Magnitude pruning: zero the weights with the smallest absolute values.

Zhang et al. 2018 (seed 001, section 5.4) prune "the p% (from 10% to 90%) of parameters
which has the lowest absolute values by setting them to zero", the algorithm of Uchida et
al. 2017. We prune the weight tensors of convolution and linear layers (not biases, not
batch-norm parameters), globally across layers by default or per layer, and zero *exactly*
``round(rate × count)`` weights: ties at the threshold are broken by position.

Example::

    pruned = MagnitudePruning(rate=0.5)(model)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ownmark.attacks.base import Attack, AttackConfig, AttackData, register_attack
from ownmark.errors import ConfigError


def prunable_weights(model: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """The (name, weight) of every convolution and linear layer, in module order."""
    return [
        (name, module.weight)
        for name, module in model.named_modules()
        if isinstance(module, nn.Conv1d | nn.Conv2d | nn.Conv3d | nn.Linear)
    ]


def _zero_smallest(weights: list[torch.Tensor], count: int) -> None:
    """Zero exactly ``count`` entries with the smallest |w| over all of ``weights``."""
    if count <= 0:
        return
    flat = torch.cat([w.detach().abs().flatten() for w in weights])
    # Stable sort: equal magnitudes are pruned in position order, so the count is exact.
    chosen = torch.sort(flat, stable=True).indices[:count]
    mask = torch.ones_like(flat, dtype=torch.bool)
    mask[chosen] = False
    offset = 0
    with torch.no_grad():
        for weight in weights:
            n = weight.numel()
            weight.mul_(mask[offset : offset + n].view_as(weight).to(weight.dtype))
            offset += n


@dataclass(frozen=True)
class PruneConfig(AttackConfig):
    """Parameters of :class:`MagnitudePruning`.

    Attributes:
        rate: fraction of conv/linear weights to zero, 0..1 (default 0.5).
        scope: ``global`` (one threshold over all layers, default) or ``layer`` (the same
            fraction in every layer).
    """

    rate: float = 0.5
    scope: str = "global"

    def __post_init__(self) -> None:
        if not 0.0 <= self.rate <= 1.0:
            raise ConfigError(f"pruning rate must lie in 0..1, got {self.rate}")
        if self.scope not in ("global", "layer"):
            raise ConfigError(f"scope must be 'global' or 'layer', got {self.scope!r}")


@register_attack
class MagnitudePruning(Attack[PruneConfig]):
    """Zero the fraction ``rate`` of conv/linear weights with the lowest |w| (no data needed)."""

    name = "prune"
    summary = "magnitude pruning of the lowest-|w| conv/linear weights (Zhang et al. 2018)"
    config_class = PruneConfig

    def apply(self, model: nn.Module, data: AttackData) -> nn.Module:
        cfg = self.config_values
        weights = [w for _, w in prunable_weights(model)]
        if not weights:
            raise ConfigError("the model has no convolution or linear layers to prune")
        if cfg.scope == "global":
            total = sum(w.numel() for w in weights)
            _zero_smallest(weights, round(cfg.rate * total))
        else:
            for weight in weights:
                _zero_smallest([weight], round(cfg.rate * weight.numel()))
        return model
