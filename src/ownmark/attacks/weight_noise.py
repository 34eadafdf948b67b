"""Weight noise: perturb every weight tensor relative to its spread, then retrain briefly.

Each convolution/linear weight tensor (see :func:`~ownmark.attacks.prune.prunable_weights`;
biases and batch-norm parameters are left alone) gets Gaussian noise with standard deviation
``scale`` times the tensor's own (population) standard deviation, drawn from a generator
seeded by ``seed``. The model is then retrained for ``epochs`` on the attacker's labelled data
(SGD, lr ``lr``, momentum 0.9) to recover the accuracy the noise cost. ``epochs=0`` gives the
noise alone; the attack still declares that it needs the attacker's train data (``needs`` is
fixed per attack), which is then not used.

Example::

    noisy = WeightNoise(scale=0.1, epochs=2)(model, AttackData(train=first, test=second))
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ownmark.attacks.base import Attack, AttackData, TrainingAttackConfig, register_attack
from ownmark.attacks.prune import prunable_weights
from ownmark.errors import ConfigError
from ownmark.train import fit


def add_relative_noise(weights: list[torch.Tensor], scale: float, seed: int) -> None:
    """Add N(0, (scale * std(w))**2) noise to each tensor ``w`` in place, reproducibly."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for weight in weights:
            spread = weight.detach().float().std(correction=0)
            noise = torch.randn(weight.shape, generator=generator, dtype=torch.float32)
            weight.add_((noise * scale * spread.cpu()).to(weight.device, weight.dtype))


@dataclass(frozen=True)
class WeightNoiseConfig(TrainingAttackConfig):
    """Parameters of :class:`WeightNoise` (``seed`` seeds the noise, shuffling and dropout).

    Attributes:
        scale: noise std relative to each tensor's std, > 0 (default 0.1).
        epochs: retraining passes over the attacker's data, >= 0 (default 2; 0: noise only).
        lr: SGD learning rate of the retraining (default 0.01).
        batch_size: default 128.
        device: torch device of the retraining (default ``cpu``).
    """

    scale: float = 0.1
    epochs: int = 2

    def __post_init__(self) -> None:
        if not self.scale > 0:
            raise ConfigError(f"noise scale must be > 0, got {self.scale}")
        super().__post_init__()


@register_attack
class WeightNoise(Attack[WeightNoiseConfig]):
    """Gaussian noise relative to each weight tensor's std, then short retraining."""

    name = "weight-noise"
    summary = "Gaussian weight noise relative to each tensor's std, then short retraining"
    config_class = WeightNoiseConfig
    needs = frozenset({"train"})

    def apply(self, model: nn.Module, data: AttackData) -> nn.Module:
        cfg = self.config_values
        weights = [w for _, w in prunable_weights(model)]
        if not weights:
            raise ConfigError("the model has no convolution or linear layers to perturb")
        add_relative_noise(weights, cfg.scale, cfg.seed)
        if cfg.epochs > 0:
            assert data.train is not None
            fit(
                model,
                data.train,
                cfg.train_config(),
                test=data.test,
                progress=self.progress,
                description=f"attack {self.name}",
            )
        return model
