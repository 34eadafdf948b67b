"""Evasion by hiding outputs: the API answers only among the model's first classes.

A thief who stole a model with a new-label watermark (``newlabel``: key samples answer an
extra class K) can serve it as a K-class classifier: the answer is the best of the K original
classes, so the extra class, and with it the watermark, never shows. Normal queries are
unaffected (the extra class is never their answer), so the API's users notice nothing. On a
model without extra classes the same attack hides real classes and costs accuracy, which the
matrix reports.

``keep`` is the number of classes the API may answer; 0 (default) keeps all but the last one.
The answers come from the model's scores restricted to those classes: a probability API would
renormalise the same way.

Example::

    api = HideClass()(newlabel_model)      # answers 0..K-1 only
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ownmark.attacks.base import Attack, AttackConfig, AttackData, register_attack
from ownmark.attacks.defence import DefendedSuspect
from ownmark.errors import ConfigError
from ownmark.metrics import logits


@dataclass(frozen=True)
class HideClassConfig(AttackConfig):
    """Parameters of :class:`HideClass` (``seed`` is unused: the attack is deterministic).

    Attributes:
        keep: classes the API may answer, the first ``keep`` outputs; 0 (default): all but
            the last.
    """

    keep: int = 0

    def __post_init__(self) -> None:
        if self.keep < 0 or self.keep == 1:
            raise ConfigError(f"keep must be 0 (all but the last) or at least 2, got {self.keep}")


class HiddenClassSuspect(DefendedSuspect):
    """A model whose API answers only among its first ``keep`` classes."""

    def __init__(self, model: nn.Module, keep: int) -> None:
        super().__init__(model, f"local model answering its first {keep} classes only")
        self.keep = keep

    def options(self) -> dict[str, Any]:
        return {"answers_classes": self.keep}

    @property
    def answer_classes(self) -> int:
        return self.keep

    def scores(self, images: torch.Tensor) -> torch.Tensor:
        return logits(self.model, images)[:, : self.keep]


@register_attack
class HideClass(Attack[HideClassConfig]):
    """The API hides the model's last classes (a new-label key's extra class)."""

    name = "hide-class"
    summary = "evasion: the API answers only the first classes, hiding an extra key class"
    config_class = HideClassConfig

    def apply(self, model: nn.Module, data: AttackData) -> HiddenClassSuspect:
        outputs = _outputs(model)
        keep = self.config_values.keep or outputs - 1
        if not 2 <= keep <= outputs:
            raise ConfigError(f"keep={keep} does not fit a model with {outputs} outputs")
        return HiddenClassSuspect(model, keep)


def _outputs(model: nn.Module) -> int:
    spec = getattr(model, "spec", None)
    if spec is not None:
        return int(spec.num_classes)
    last = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not last:
        raise ConfigError("cannot tell how many classes the model has (no linear layer)")
    return int(last[-1].out_features)
