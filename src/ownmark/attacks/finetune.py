"""Fine-tuning attack: keep training the stolen model on the attacker's own data.

Zhang et al. 2018 (seed 001, section 5.4) split the test set into two halves, fine-tune on
the first and evaluate on the second. The excerpt does not give the fine-tuning schedule; by
default we use the training loop's SGD (lr 0.01, momentum 0.9, batch 128) for 10 epochs over
all layers. Parameters of the run are recorded in the result.

Example::

    first, second = data.test.halves()
    tuned = FineTuning(epochs=10)(model, AttackData(train=first, test=second))
"""

from __future__ import annotations

import dataclasses
from typing import Any

from torch import nn

from ownmark.attacks.base import Attack, AttackData, register_attack
from ownmark.train import TrainConfig, fit


@register_attack
class FineTuning(Attack):
    """Fine-tune every layer on the attacker's data with plain cross-entropy.

    Args:
        epochs: passes over the attacker's data (default 10).
        lr: SGD learning rate (default 0.01).
        batch_size: default 128.
        seed: seeds shuffling and dropout (default 0).
        device: default ``cpu``.
        progress: show a progress bar (default True).
    """

    name = "finetune"
    summary = "fine-tune on the first half of the test set (Zhang et al. 2018)"
    needs_data = True

    def __init__(
        self,
        epochs: int = 10,
        lr: float = 0.01,
        batch_size: int = 128,
        seed: int = 0,
        device: str = "cpu",
        progress: bool = True,
    ) -> None:
        self.train_config = TrainConfig(
            epochs=epochs, lr=lr, batch_size=batch_size, seed=seed, device=device
        )
        self.progress = progress

    def config(self) -> dict[str, Any]:
        cfg = dataclasses.asdict(self.train_config)
        for unused in ("key_ratio", "device"):
            cfg.pop(unused)
        return {"attack": self.name, **cfg}

    def run(self, model: nn.Module, data: AttackData) -> None:
        assert data.train is not None
        fit(
            model,
            data.train,
            self.train_config,
            test=data.test,
            progress=self.progress,
            description="fine-tune",
        )
