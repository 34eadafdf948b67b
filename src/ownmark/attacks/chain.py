"""Chained attacks: several registered attacks applied one after the other.

The robustness matrix writes a chain as ``rtal:epochs=5>magnet`` (the issue's "the two
strongest removals in sequence, and a removal followed by the strongest evasion"). Every
step but the last must return a model; the last may put a defence in front of it. An
attack that queries the stolen model's API (``distill``) queries the model as the earlier
steps left it. The chain is not registered by name: its parameters are other attacks.

Example::

    chain = ChainedAttack([create_attack("rtal"), create_attack("magnet")])
    defended = chain(model, AttackData(train=first_half, unlabelled=first_half))
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ownmark.attacks.base import Attack, AttackConfig, AttackData
from ownmark.errors import ConfigError
from ownmark.keys import KeySet
from ownmark.verify.suspects import LocalModelSuspect, Suspect

#: Separates the steps of a chain in an attack spec.
CHAIN_SEPARATOR = ">"


class ChainedAttack(Attack[AttackConfig]):
    """Apply ``steps`` in order; needs what any step needs."""

    name = "chain"
    summary = "several attacks in sequence (every step but the last returns a model)"

    def __init__(self, steps: Sequence[Attack[Any]], *, progress: bool = True) -> None:
        if len(steps) < 2:
            raise ConfigError("a chain needs at least two attacks, like rtal>magnet")
        super().__init__(AttackConfig(), progress=progress)
        self.steps = list(steps)
        self.name = CHAIN_SEPARATOR.join(step.name for step in self.steps)  # type: ignore[misc]
        self.needs = frozenset().union(*(step.needs for step in self.steps))  # type: ignore[misc]

    def apply(self, model: nn.Module, data: AttackData) -> nn.Module | Suspect:
        current: nn.Module | Suspect = model
        for i, step in enumerate(self.steps):
            if not isinstance(current, nn.Module):
                raise ConfigError(
                    f"{self.steps[i - 1].name!r} puts a defence in front of the model, so it "
                    "can only be the last step of a chain"
                )
            step_data = data
            if "suspect" in step.needs:  # query the model as the earlier steps left it
                step_data = dataclasses.replace(data, suspect=LocalModelSuspect(current))
            current = step(current, step_data)
        return current

    def findings(self) -> dict[str, Any]:
        found = {step.name: step.findings() for step in self.steps}
        return {name: value for name, value in found.items() if value}

    def score(self, key: KeySet) -> dict[str, Any]:
        scored: dict[str, Any] = {}
        for step in self.steps:
            scored.update(step.score(key))
        return scored

    def artifacts(self) -> dict[str, torch.Tensor]:
        return {
            f"{step.name}-{stem}": images
            for step in self.steps
            for stem, images in step.artifacts().items()
        }

    def config(self) -> dict[str, Any]:
        return {"attack": self.name, "steps": [step.config() for step in self.steps]}
