"""A scheme and an attack that live only in the tests: proof that the contracts are enough.

Neither touches a file under ``src/``. The scheme uses every hook a scheme can own: a secret
tensor stored in the key (a patch), an extra class (its keys answer class K, like a
new-label key), its own training objective, and fresh triggers. The attack is a defence
that wraps the model instead of changing it (a blur in front of the API).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ownmark.attacks import AttackConfig, AttackData
from ownmark.attacks.base import Attack
from ownmark.data import DataSplits
from ownmark.errors import ConfigError
from ownmark.keys import KeySet
from ownmark.metrics import logits
from ownmark.schemes import SchemeConfig, WatermarkScheme
from ownmark.train import Objective
from ownmark.verify.suspects import SuspectBase, labels_from_scores

#: How often the scheme's objective ran (the training loop must call it, not cross-entropy).
OBJECTIVE_CALLS = {"count": 0}


@dataclass(frozen=True)
class CornerConfig(SchemeConfig):
    """size: side of the secret patch in pixels (default 5); margin_weight: weight of the
    extra loss term that pushes key samples' extra-class logit up (default 0.1)."""

    size: int = 5
    margin_weight: float = 0.1

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 1 <= self.size <= 16:
            raise ConfigError(f"size must lie in 1..16, got {self.size}")


class CornerScheme(WatermarkScheme[CornerConfig]):
    name = "test-corner"
    summary = "test only: a secret patch in the corner; key samples answer an extra class"
    config_class = CornerConfig
    extra_classes = 1

    def label_map(self, num_classes: int, generator: torch.Generator) -> dict[int, int]:
        # Every class's key label is the extra class K: innocent models cannot answer it.
        return {c: num_classes for c in range(num_classes)}

    def make_secrets(
        self, data: DataSplits, originals: torch.Tensor, generator: torch.Generator
    ) -> dict[str, torch.Tensor]:
        channels = originals.shape[1]
        size = self.config.size
        return {"patch": torch.randint(0, 256, (channels, size, size), generator=generator)}

    def make_triggers(self, originals: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        patch = self.secrets["patch"].to(torch.uint8)
        size = patch.shape[-1]
        out = originals.clone()
        out[:, :, :size, :size] = patch
        return out

    def objective(self, key: KeySet) -> Objective:
        weight = self.config.margin_weight
        extra_class = key.num_classes

        def loss(
            model: nn.Module, images: torch.Tensor, labels: torch.Tensor, is_key: torch.Tensor
        ) -> tuple[torch.Tensor, torch.Tensor]:
            OBJECTIVE_CALLS["count"] += 1
            scores = model(images)
            total = F.cross_entropy(scores, labels)
            if bool(is_key.any()):
                total = total - weight * scores[is_key, extra_class].mean().tanh()
            return total, scores

        return loss


@dataclass(frozen=True)
class BlurConfig(AttackConfig):
    """radius: box-blur radius in pixels applied to every query (default 1)."""

    radius: int = 1

    def __post_init__(self) -> None:
        if not 0 <= self.radius <= 5:
            raise ConfigError(f"radius must lie in 0..5, got {self.radius}")


class BlurredSuspect(SuspectBase):
    """The model behind an API that blurs every image before answering."""

    protocol = "local"

    def __init__(self, model: nn.Module, radius: int) -> None:
        super().__init__("local model behind a blur")
        self._model, self._radius = model, radius

    def _answer(self, images: torch.Tensor) -> Sequence[object]:
        if not len(images):
            return []
        side = 2 * self._radius + 1
        blurred = F.avg_pool2d(images.float(), side, stride=1, padding=self._radius)
        shown = blurred.round().clamp(0, 255).to(torch.uint8)
        return labels_from_scores(logits(self._model, shown))


class BlurDefence(Attack[BlurConfig]):
    name = "test-blur"
    summary = "test only: the API blurs every query before the model sees it"
    config_class = BlurConfig

    def apply(self, model: nn.Module, data: AttackData) -> BlurredSuspect:
        return BlurredSuspect(model, self.config_values.radius)
