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

from dataclasses import dataclass

from torch import nn

from ownmark.attacks.base import Attack, AttackData, TrainingAttackConfig, register_attack
from ownmark.train import fit


@dataclass(frozen=True)
class FineTuneConfig(TrainingAttackConfig):
    """Parameters of :class:`FineTuning` (``seed`` seeds shuffling and dropout).

    Attributes:
        epochs: passes over the attacker's data (default 10).
        lr: SGD learning rate (default 0.01).
        batch_size: default 128.
        device: torch device (default ``cpu``).
    """

    epochs: int = 10


@register_attack
class FineTuning(Attack[FineTuneConfig]):
    """Fine-tune every layer on the attacker's labelled data with plain cross-entropy."""

    name = "finetune"
    summary = "fine-tune on the first half of the test set (Zhang et al. 2018)"
    config_class = FineTuneConfig
    needs = frozenset({"train"})

    def apply(self, model: nn.Module, data: AttackData) -> nn.Module:
        assert data.train is not None
        fit(
            model,
            data.train,
            self.config_values.train_config(),
            test=data.test,
            progress=self.progress,
            description=f"attack {self.name}",
        )
        return model
