"""Watermark overwriting: the attacker embeds a key of their own on top of the owner's.

The attacker generates a key of a registered scheme (``scheme``, default ``content``) from
their own labelled data with :func:`ownmark.schemes.create_scheme` — ``num_keys`` trigger
images, ``num_decoys`` decoys, the secrets seeded by ``seed`` — and fine-tunes the stolen
model on their data mixed with it (:func:`ownmark.train.fit` with ``key=``; a ``key_ratio``
fraction of each epoch's samples are key samples). The new watermark competes with the
owner's for the same capacity, and the attacker can claim the model as theirs.

Key generation gets the attacker's train data as its train split (trigger sources and
decoys are drawn from it) and their test data, or the train data again when there is none,
as its test split. ``num_decoys`` None takes as many
as the classes hold beside the key samples, up to the scheme's default, so small data does
not fail.

Example::

    overwritten = Overwrite(num_keys=50, epochs=5)(model, AttackData(train=first, test=second))
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from ownmark.attacks.base import Attack, AttackData, TrainingAttackConfig, register_attack
from ownmark.data import DataSplits
from ownmark.keys import KeySet
from ownmark.schemes import create_scheme
from ownmark.schemes.base import WatermarkScheme
from ownmark.train import TrainConfig, fit


@dataclass(frozen=True)
class OverwriteConfig(TrainingAttackConfig):
    """Parameters of :class:`Overwrite` (``seed`` seeds the attacker's key and the training).

    Attributes:
        scheme: registered scheme of the attacker's key (default ``content``).
        num_keys: trigger images in the attacker's key, >= 1 (default 50).
        num_decoys: decoys stored with it, >= 0; None (default): what the data allows.
        epochs: fine-tuning passes, >= 0 (default 5).
        lr: SGD learning rate (default 0.01).
        key_ratio: fraction of each epoch's samples that are key samples, [0, 1) (default 0.15).
        batch_size: default 128.
        device: torch device of the fine-tuning (default ``cpu``).
    """

    scheme: str = "content"
    num_keys: int = 50
    num_decoys: int | None = None
    key_ratio: float = 0.15

    def train_config(self, **extra: Any) -> TrainConfig:
        """The training loop's config, with the key's share of each epoch."""
        return super().train_config(key_ratio=self.key_ratio, **extra)

    def make_scheme(self) -> WatermarkScheme[Any]:
        """The attacker's scheme (validates its name and key counts)."""
        return create_scheme(self.scheme, num_keys=self.num_keys, num_decoys=self.num_decoys)

    def __post_init__(self) -> None:
        super().__post_init__()
        self.make_scheme()  # the scheme's own config checks num_keys and num_decoys


@register_attack
class Overwrite(Attack[OverwriteConfig]):
    """Embed the attacker's own key of a scheme on top of the owner's watermark."""

    name = "overwrite"
    summary = "embed the attacker's own key on top of the owner's watermark by fine-tuning"
    config_class = OverwriteConfig
    needs = frozenset({"train"})

    def attacker_key(self, data: AttackData) -> KeySet:
        """The attacker's key, generated from their train data (reproducible from ``seed``)."""
        assert data.train is not None
        cfg = self.config_values
        splits = DataSplits(train=data.train, test=data.test or data.train)
        return cfg.make_scheme().generate(splits, seed=cfg.seed, dataset=data.train.name)

    def apply(self, model: nn.Module, data: AttackData) -> nn.Module:
        assert data.train is not None
        cfg = self.config_values
        key = self.attacker_key(data)
        if cfg.epochs > 0:
            fit(
                model,
                data.train,
                cfg.train_config(),
                test=data.test,
                key=key,
                progress=self.progress,
                description=f"attack {self.name}",
            )
        return model
