"""Shared base of the watermark-removal attacks, and their registry.

An attack takes a (stolen) model and returns a modified copy; the original is untouched.
The attacker's data, if the attack needs any, comes in an :class:`AttackData`.
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

from torch import nn

from ownmark.data.base import ImageDataset
from ownmark.errors import ConfigError


@dataclass(frozen=True)
class AttackData:
    """Data the attacker holds: ``train`` to adapt the model, ``test`` to judge it."""

    train: ImageDataset | None = None
    test: ImageDataset | None = None


class Attack(ABC):
    """Base class: copies the model, calls :meth:`run`, returns the copy in eval mode."""

    name: ClassVar[str]
    summary: ClassVar[str]
    needs_data: ClassVar[bool] = False

    def __call__(self, model: nn.Module, data: AttackData | None = None) -> nn.Module:
        if self.needs_data and (data is None or data.train is None):
            raise ConfigError(f"attack {self.name!r} needs training data for the attacker")
        attacked = copy.deepcopy(model)
        self.run(attacked, data or AttackData())
        attacked.eval()
        return attacked

    @abstractmethod
    def run(self, model: nn.Module, data: AttackData) -> None:
        """Modify ``model`` in place."""

    @abstractmethod
    def config(self) -> dict[str, Any]:
        """The attack's parameters, for result files."""


_ATTACKS: dict[str, type[Attack]] = {}
AttackT = TypeVar("AttackT", bound=type[Attack])


def register_attack(cls: AttackT) -> AttackT:
    """Class decorator that makes an attack available by its ``name``."""
    if cls.name in _ATTACKS:
        raise ValueError(f"attack {cls.name!r} is registered twice")
    _ATTACKS[cls.name] = cls
    return cls


def list_attacks() -> list[str]:
    return sorted(_ATTACKS)


def get_attack_class(name: str) -> type[Attack]:
    try:
        return _ATTACKS[name]
    except KeyError:
        raise ConfigError(
            f"unknown attack {name!r}; choose one of: {', '.join(list_attacks())}"
        ) from None
