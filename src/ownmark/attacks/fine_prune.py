"""Fine-pruning (Liu et al. 2018, "Fine-Pruning: Defending Against Backdooring Attacks on Deep
Neural Networks"): prune the dormant channels of the last convolution layer, then fine-tune.

The last convolution layer is the last :class:`torch.nn.Conv2d` in ``model.modules()`` order.
Its mean output per channel (the conv's own output, averaged over the batch and the spatial
positions) is recorded with a forward hook while the model, in eval mode and without
gradients, classifies the attacker's clean train images. The ``round(rate × channels)``
channels with the lowest mean activation (ties broken by channel index) are pruned: their
weight slices and biases are set to zero. Watermarks tend to live in neurons that clean data
leaves dormant, which is what pruning by activation removes.

Fine-tuning (``epochs``, SGD with momentum 0.9, lr ``lr``, :func:`ownmark.train.fit`) then
restores the accuracy lost. Pruned channels stay pruned: gradient hooks zero the gradients of
the pruned slices during training, and the mask is applied once more after training, so they
end exactly zero. ``epochs=0`` gives the pruning alone. A batch-norm layer after the conv is
not touched, so a pruned channel may still emit that layer's bias (LeNet-5 and the other
built-in models without batch norm emit exactly zero).

Example::

    pruned = FinePruning(rate=0.5, epochs=5)(model, AttackData(train=first, test=second))
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ownmark.attacks.base import Attack, AttackData, TrainingAttackConfig, register_attack
from ownmark.data.base import ImageDataset
from ownmark.errors import ConfigError
from ownmark.metrics import to_float_images
from ownmark.train import fit


def last_conv(model: nn.Module) -> nn.Conv2d:
    """The last :class:`torch.nn.Conv2d` module of ``model`` in ``model.modules()`` order."""
    convs = [module for module in model.modules() if isinstance(module, nn.Conv2d)]
    if not convs:
        raise ConfigError("the model has no convolution layer to fine-prune")
    return convs[-1]


@torch.no_grad()
def mean_channel_activation(
    model: nn.Module, conv: nn.Conv2d, data: ImageDataset, batch_size: int = 256
) -> torch.Tensor:
    """Mean output (float64, on CPU) of each output channel of ``conv`` over ``data``'s images.

    The model runs in eval mode; its train/eval mode is restored afterwards.
    """
    total = torch.zeros(conv.out_channels, dtype=torch.float64)
    count = 0

    def record(_module: nn.Module, _inputs: Any, output: torch.Tensor) -> None:
        nonlocal count
        total.add_(output.detach().double().sum(dim=(0, 2, 3)).cpu())
        count += output.shape[0] * output.shape[2] * output.shape[3]

    device = next(iter(model.parameters())).device
    was_training = model.training
    handle = conv.register_forward_hook(record)
    model.eval()
    try:
        for start in range(0, len(data), batch_size):
            model(to_float_images(data.images[start : start + batch_size].to(device)))
    finally:
        handle.remove()
        model.train(was_training)
    return total / max(count, 1)


def prune_channels(conv: nn.Conv2d, channels: torch.Tensor) -> torch.Tensor:
    """Zero the weights and biases of ``conv``'s output ``channels``; returns the keep mask."""
    keep = torch.ones(conv.out_channels, dtype=torch.bool)
    keep[channels] = False
    with torch.no_grad():
        _apply_mask(conv, keep)
    return keep


def _apply_mask(conv: nn.Conv2d, keep: torch.Tensor) -> None:
    conv.weight.mul_(keep.view(-1, 1, 1, 1).to(conv.weight.device, conv.weight.dtype))
    if conv.bias is not None:
        conv.bias.mul_(keep.to(conv.bias.device, conv.bias.dtype))


@dataclass(frozen=True)
class FinePruneConfig(TrainingAttackConfig):
    """Parameters of :class:`FinePruning` (``seed`` seeds shuffling and dropout).

    Attributes:
        rate: fraction of the last conv layer's output channels to prune, 0..1 (default 0.5).
        epochs: fine-tuning passes over the attacker's data, >= 0 (default 5; 0: prune only).
        lr: SGD learning rate of the fine-tuning (default 0.01).
        batch_size: default 128.
        device: torch device of the fine-tuning (default ``cpu``).
    """

    rate: float = 0.5

    def __post_init__(self) -> None:
        if not 0.0 <= self.rate <= 1.0:
            raise ConfigError(f"fine-pruning rate must lie in 0..1, got {self.rate}")
        super().__post_init__()


@register_attack
class FinePruning(Attack[FinePruneConfig]):
    """Prune the least active channels of the last conv layer, then fine-tune (Liu et al.)."""

    name = "fine-prune"
    summary = "prune the last conv layer's least active channels, then fine-tune (Liu et al. 2018)"
    config_class = FinePruneConfig
    needs = frozenset({"train"})

    def apply(self, model: nn.Module, data: AttackData) -> nn.Module:
        assert data.train is not None
        cfg = self.config_values
        conv = last_conv(model)
        means = mean_channel_activation(model, conv, data.train)
        count = round(cfg.rate * conv.out_channels)
        # Stable sort: equal means are pruned in channel order, so the count is exact.
        chosen = torch.sort(means, stable=True).indices[:count]
        keep = prune_channels(conv, chosen)
        if cfg.epochs > 0 and count > 0:
            weight_mask = keep.view(-1, 1, 1, 1).to(conv.weight.device, conv.weight.dtype)
            handles = [conv.weight.register_hook(lambda grad: grad * weight_mask)]  # type: ignore[no-untyped-call]
            if conv.bias is not None:
                bias_mask = keep.to(conv.bias.device, conv.bias.dtype)
                handles.append(conv.bias.register_hook(lambda grad: grad * bias_mask))  # type: ignore[no-untyped-call]
            try:
                self._fine_tune(model, data)
            finally:
                for handle in handles:
                    handle.remove()
            with torch.no_grad():
                _apply_mask(conv, keep)  # exact zeros whatever the optimizer did
        elif cfg.epochs > 0:
            self._fine_tune(model, data)
        return model

    def _fine_tune(self, model: nn.Module, data: AttackData) -> None:
        assert data.train is not None
        fit(
            model,
            data.train,
            self.config_values.train_config(),
            test=data.test,
            progress=self.progress,
            description=f"attack {self.name}",
        )
