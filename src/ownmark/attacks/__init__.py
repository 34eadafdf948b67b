"""Attacks on watermarks, one file each, enumerated through :data:`ATTACKS`.

Removal: ``prune``, ``finetune``, the SoK fine-tuning family ``ftll``/``ftal``/``rtll``/
``rtal``, ``fine-prune``, ``quantize``, ``weight-noise``, ``overwrite`` (the attacker's own key
on top), ``distill`` (extraction through the suspect's API), ``neural-cleanse`` (reverse
the trigger, unlearn it).
Detection and evasion (the API answers flagged queries with the runner-up class):
``preprocess`` (JPEG, blur, median, noise on every query), ``strip``, ``magnet``,
``hide-class`` (answers only the first classes: hides a new-label key's extra class).
Inspection and forgery: ``invert`` (model inversion), ``forge`` (an after-the-fact claim).
Chains of attacks: :class:`~ownmark.attacks.chain.ChainedAttack`.
"""

from __future__ import annotations

from ownmark.attacks import (  # noqa: F401  (registration)
    distill,
    fine_prune,
    finetune,
    forge,
    hide_class,
    invert,
    magnet,
    neural_cleanse,
    overwrite,
    preprocess,
    prune,
    quantize,
    strip,
    transfer,
    weight_noise,
)
from ownmark.attacks.base import (
    ATTACKS,
    NEEDS,
    Attack,
    AttackConfig,
    AttackData,
    TrainingAttackConfig,
    create_attack,
    get_attack_class,
    list_attacks,
    register_attack,
)
from ownmark.attacks.finetune import FineTuneConfig, FineTuning
from ownmark.attacks.prune import MagnitudePruning, PruneConfig, prunable_weights

__all__ = [
    "ATTACKS",
    "NEEDS",
    "Attack",
    "AttackConfig",
    "AttackData",
    "FineTuneConfig",
    "FineTuning",
    "MagnitudePruning",
    "PruneConfig",
    "TrainingAttackConfig",
    "create_attack",
    "get_attack_class",
    "list_attacks",
    "prunable_weights",
    "register_attack",
]
