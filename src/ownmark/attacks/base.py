"""The contract every attack follows, and the attack registry.

An attack is a frozen config dataclass plus one method, :meth:`Attack.apply`. It receives a
copy of the (stolen) model and what it declared it ``needs`` from :class:`AttackData`:

- ``train``: labelled data of the attacker (fine-tuning, fine-pruning, unlearning);
- ``unlabelled``: images without labels (distillation labels them by querying);
- ``test``: data to judge the attacked model's accuracy;
- ``suspect``: only query access to the stolen model's API, through the same
  :class:`~ownmark.verify.suspects.Suspect` interface the verifier uses.

It returns either a modified model (removal attacks) or a :class:`~ownmark.verify.suspects.Suspect`
that wraps the model (an input-transforming or query-detecting defence in front of the API).
The original model is never touched.

Adding an attack: subclass ``Attack[MyConfig]`` with ``MyConfig`` deriving from
:class:`AttackConfig` (validating in ``__post_init__``), set ``name``, ``summary`` and
``needs``, implement ``apply``, decorate with :func:`register_attack`. ``ownmark attack NAME
-p k=v``, ``ownmark list``, the robustness matrix and the contract tests pick it up.
"""

from __future__ import annotations

import copy
import dataclasses
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, TypeVar, cast

import torch
from torch import nn

from ownmark.data.base import ImageDataset
from ownmark.errors import ConfigError
from ownmark.keys import KeySet
from ownmark.registry import Registry
from ownmark.train import TrainConfig
from ownmark.verify.suspects import Suspect

#: What an attack may ask for (see :class:`AttackData`).
NEEDS = ("train", "unlabelled", "test", "suspect")


@dataclass(frozen=True)
class AttackData:
    """What the attacker holds.

    Attributes:
        train: labelled data to adapt the model with.
        test: data to judge the attacked model (never used to attack it).
        unlabelled: images whose labels the attacker does not know (labels are ignored).
        suspect: query access to the stolen model's prediction API.
    """

    train: ImageDataset | None = None
    test: ImageDataset | None = None
    unlabelled: ImageDataset | None = None
    suspect: Suspect | None = None


@dataclass(frozen=True)
class AttackConfig:
    """Parameters every attack shares.

    Attributes:
        seed: seeds the attack's randomness (default 0).
    """

    seed: int = 0


@dataclass(frozen=True)
class TrainingAttackConfig(AttackConfig):
    """Parameters every attack that trains shares, validated as the training loop's own.

    Attributes:
        epochs: passes over the attacker's data (default 5; a subclass may change it).
        lr: SGD learning rate (default 0.01).
        batch_size: default 128.
        device: torch device (default ``cpu``; left out of result records).
    """

    epochs: int = 5
    lr: float = 0.01
    batch_size: int = 128
    device: str = "cpu"

    def train_config(self, **extra: Any) -> TrainConfig:
        """The training loop's config (``extra``: further :class:`TrainConfig` fields)."""
        return TrainConfig(
            epochs=self.epochs,
            lr=self.lr,
            batch_size=self.batch_size,
            seed=self.seed,
            device=self.device,
            **extra,
        )

    def __post_init__(self) -> None:
        self.train_config()


ConfigT = TypeVar("ConfigT", bound=AttackConfig)


class Attack(ABC, Generic[ConfigT]):
    """Base class: checks the attacker's data, copies the model, calls :meth:`apply`.

    Build one from a config (``Prune(PruneConfig(rate=0.3))``) or keywords
    (``Prune(rate=0.3)``); ``progress`` switches progress bars of long attacks.
    """

    name: ClassVar[str]
    summary: ClassVar[str]
    config_class: ClassVar[type[AttackConfig]] = AttackConfig
    #: Which fields of :class:`AttackData` the attack cannot do without.
    needs: ClassVar[frozenset[str]] = frozenset()

    def __init__(
        self, config: ConfigT | None = None, *, progress: bool = True, **params: Any
    ) -> None:
        if config is not None and params:
            raise TypeError("give a config or keyword parameters, not both")
        built: AttackConfig
        if config is None:
            try:
                built = self.config_class(**params)
            except TypeError as exc:
                raise ConfigError(f"invalid parameters for attack {self.name!r}: {exc}") from exc
        else:
            built = config
        if not isinstance(built, self.config_class):
            raise TypeError(f"{self.name} expects a {self.config_class.__name__}")
        self.config_values: ConfigT = cast(ConfigT, built)
        self.progress = progress

    def __call__(self, model: nn.Module, data: AttackData | None = None) -> nn.Module | Suspect:
        data = data or AttackData()
        missing = [need for need in sorted(self.needs) if getattr(data, need) is None]
        if missing:
            raise ConfigError(f"attack {self.name!r} needs the attacker's {', '.join(missing)}")
        attacked = self.apply(copy.deepcopy(model), data)
        if isinstance(attacked, nn.Module):
            attacked.eval()
        return attacked

    @abstractmethod
    def apply(self, model: nn.Module, data: AttackData) -> nn.Module | Suspect:
        """Attack ``model`` (a copy, free to modify in place); return the model or a suspect."""

    def findings(self) -> dict[str, Any]:
        """What the last :meth:`apply` found besides the attacked model, JSON-serialisable
        (Neural Cleanse's flagged classes, a forger's claim...); default: nothing."""
        return {}

    def score(self, key: KeySet) -> dict[str, Any]:
        """Measurements of the last :meth:`apply` that need the owner's ``key``, which the
        attack itself never sees (e.g. how close inverted images come to the key images);
        JSON-serialisable; default: nothing."""
        return {}

    def artifacts(self) -> dict[str, torch.Tensor]:
        """Images the last :meth:`apply` produced, by file stem (uint8 N×C×H×W), for the
        caller to save (``ownmark attack --artifacts DIR``); default: none."""
        return {}

    def config(self) -> dict[str, Any]:
        """The attack's name and parameters, for result files (not ``device``: where it ran
        does not change what it did)."""
        record = {"attack": self.name, **dataclasses.asdict(self.config_values)}
        record.pop("device", None)
        return record


ATTACKS: Registry[Attack[Any]] = Registry("attack")
#: Class decorator that makes an attack available by its ``name``.
register_attack = ATTACKS.register


def list_attacks() -> list[str]:
    return ATTACKS.names()


def get_attack_class(name: str) -> type[Attack[Any]]:
    cls: type[Attack[Any]] = ATTACKS.entry(name).target
    return cls


def create_attack(name: str, *, progress: bool = True, **params: Any) -> Attack[Any]:
    """Build a registered attack; string values are converted to the config's field types."""
    attack = ATTACKS.create(name, **params)
    attack.progress = progress
    return attack
