"""Imported by the matrix's worker processes (``plugins=("matrix_plugins",)``): an attack
that always crashes, to test that a crashed cell is reported, kept out of the table's
figures, and retried by the next run."""

from __future__ import annotations

from torch import nn

from ownmark.attacks import ATTACKS, Attack, AttackConfig, AttackData


class CrashingAttack(Attack[AttackConfig]):
    name = "test-crash"
    summary = "test only: raises, as an attack with a bug would"

    def apply(self, model: nn.Module, data: AttackData) -> nn.Module:
        raise RuntimeError("this attack always fails")


if CrashingAttack.name not in ATTACKS.names():
    ATTACKS.register(CrashingAttack)
