"""The fine-tuning family of the SoK (Lukas et al., "SoK: How robust is image classification
deep neural network watermarking?", S&P 2022): FTLL, FTAL, RTLL and RTAL.

- ``ftll``: fine-tune the last layer only;
- ``ftal``: fine-tune all layers;
- ``rtll``: re-initialise the last layer, then train only it;
- ``rtal``: re-initialise the last layer, then train all layers.

The "last layer" is the last :class:`torch.nn.Linear` module of the model in
``model.modules()`` order (the classification head). Re-initialisation calls its
``reset_parameters`` (PyTorch's default init) under a fork of the RNG seeded by ``seed``, so it
is reproducible and leaves the global RNG alone. Layers not trained are frozen with
``requires_grad_(False)`` for the run and restored afterwards; SGD skips parameters without
gradients, so they stay exactly as they were (batch-norm running statistics, which are
buffers, still follow the attacker's data in training mode).

``budget`` is the fraction of the attacker's labelled data used (the SoK's 1% / 10% / all),
a seeded random subset of ``max(1, round(budget * n))`` samples. Training is
:func:`ownmark.train.fit`: SGD, momentum 0.9, plain cross-entropy.

Example::

    first, second = data.test.halves()
    tuned = FineTuneAllLayers(epochs=5, budget=0.1)(model, AttackData(train=first, test=second))
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from ownmark.attacks.base import Attack, AttackData, TrainingAttackConfig, register_attack
from ownmark.data.base import ImageDataset
from ownmark.errors import ConfigError
from ownmark.train import fit


def last_linear(model: nn.Module) -> nn.Linear:
    """The last :class:`torch.nn.Linear` module of ``model`` (its classification head)."""
    linears = [module for module in model.modules() if isinstance(module, nn.Linear)]
    if not linears:
        raise ConfigError("the model has no linear layer to treat as its last layer")
    return linears[-1]


def budget_subset(data: ImageDataset, budget: float, seed: int) -> ImageDataset:
    """A seeded random ``budget`` fraction of ``data`` (at least one sample; all of it at 1)."""
    if budget >= 1.0:
        return data
    count = max(1, round(budget * len(data)))
    generator = torch.Generator().manual_seed(seed)
    chosen = torch.randperm(len(data), generator=generator)[:count]
    return data.subset(chosen, f"{data.name}[budget {budget:g}: {count}]")


@dataclass(frozen=True)
class TransferConfig(TrainingAttackConfig):
    """Parameters of the SoK fine-tuning attacks (``seed`` seeds the subset, the
    re-initialisation, shuffling and dropout).

    Attributes:
        epochs: passes over the attacker's (budgeted) data, >= 0 (default 5).
        lr: SGD learning rate (default 0.01).
        budget: fraction of the attacker's train data used, in (0, 1] (default 1.0).
        batch_size: default 128.
        device: torch device (default ``cpu``).
    """

    budget: float = 1.0

    def __post_init__(self) -> None:
        if not 0.0 < self.budget <= 1.0:
            raise ConfigError(f"budget must lie in (0, 1], got {self.budget}")
        super().__post_init__()


class TransferAttack(Attack[TransferConfig]):
    """Shared body of FTLL / FTAL / RTLL / RTAL; subclasses set the two switches."""

    config_class = TransferConfig
    needs = frozenset({"train"})
    #: Re-initialise the last layer before training.
    reinit_last: ClassVar[bool] = False
    #: Train every layer (else only the last one).
    train_all: ClassVar[bool] = True

    def apply(self, model: nn.Module, data: AttackData) -> nn.Module:
        assert data.train is not None
        cfg = self.config_values
        head = last_linear(model)
        if self.reinit_last:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(cfg.seed)
                head.reset_parameters()
        train = budget_subset(data.train, cfg.budget, cfg.seed)
        head_params = {id(p) for p in head.parameters()}
        frozen = (
            [] if self.train_all else [p for p in model.parameters() if id(p) not in head_params]
        )
        saved = [p.requires_grad for p in frozen]
        for parameter in frozen:
            parameter.requires_grad_(False)
        try:
            fit(
                model,
                train,
                cfg.train_config(),
                test=data.test,
                progress=self.progress,
                description=f"attack {self.name}",
            )
        finally:
            for parameter, flag in zip(frozen, saved, strict=True):
                parameter.requires_grad_(flag)
        return model


@register_attack
class FineTuneLastLayer(TransferAttack):
    """FTLL: fine-tune only the last linear layer."""

    name = "ftll"
    summary = "fine-tune the last layer only (FTLL, Lukas et al. 2022)"
    reinit_last = False
    train_all = False


@register_attack
class FineTuneAllLayers(TransferAttack):
    """FTAL: fine-tune every layer."""

    name = "ftal"
    summary = "fine-tune all layers (FTAL, Lukas et al. 2022)"
    reinit_last = False
    train_all = True


@register_attack
class RetrainLastLayer(TransferAttack):
    """RTLL: re-initialise the last linear layer, then train only it."""

    name = "rtll"
    summary = "re-initialise the last layer, then train it alone (RTLL, Lukas et al. 2022)"
    reinit_last = True
    train_all = False


@register_attack
class RetrainAllLayers(TransferAttack):
    """RTAL: re-initialise the last linear layer, then train every layer."""

    name = "rtal"
    summary = "re-initialise the last layer, then train all layers (RTAL, Lukas et al. 2022)"
    reinit_last = True
    train_all = True
