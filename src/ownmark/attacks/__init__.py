"""Watermark-removal attacks, one file each, enumerated through a registry."""

from __future__ import annotations

from ownmark.attacks import finetune, prune  # noqa: F401  (registration)
from ownmark.attacks.base import Attack, AttackData, get_attack_class, list_attacks, register_attack
from ownmark.attacks.finetune import FineTuning
from ownmark.attacks.prune import MagnitudePruning, prunable_weights

__all__ = [
    "Attack",
    "AttackData",
    "FineTuning",
    "MagnitudePruning",
    "get_attack_class",
    "list_attacks",
    "prunable_weights",
    "register_attack",
]
