"""Model extraction: train a fresh model on the suspect's answers to the attacker's images.

The attacker holds unlabelled images and query access to the stolen model's prediction API
(the same :class:`~ownmark.verify.suspects.Suspect` interface the verifier uses). They send
at most ``queries`` of their images, ``query_batch`` per call, keep every image that came
back with a usable top-1 label (answers that are :class:`InvalidAnswer`, not an int, or out
of the class range are dropped with their images), and train a freshly initialised student
(same architecture as the stolen model by default, or any registered one) on those labels
with the ordinary training loop. The stolen model's weights are never read: only its spec
(number of classes, input shape and, by default, architecture) is, as a user of an API
would know them from its documentation. Labels only: a top-1 API gives no probabilities.

Why not ART's extraction attacks: they wrap the victim as an ART classifier and call its
``predict`` directly, which would bypass ownmark's suspect interface (query accounting,
invalid answers, remote APIs); the loop here is short and uses :func:`ownmark.train.fit`.

Example::

    attack = Distillation(queries=5000, epochs=10)
    student = attack(model, AttackData(unlabelled=images, suspect=api))
    attack.spent  # images sent to the API
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ownmark.attacks.base import Attack, AttackData, TrainingAttackConfig, register_attack
from ownmark.data import ImageDataset
from ownmark.errors import ConfigError
from ownmark.models import MODELS, ModelSpec, build_model
from ownmark.train import fit


@dataclass(frozen=True)
class DistillConfig(TrainingAttackConfig):
    """Parameters of :class:`Distillation` (``seed`` seeds the student, the choice of
    queried images and the training loop).

    Attributes:
        arch: the student's architecture, a registered model name (default "": the same as
            the stolen model's).
        queries: query budget, the most images sent to the suspect (default 0: all of the
            attacker's unlabelled images).
        epochs: training passes over the answered images (default 10).
        lr: SGD learning rate (default 0.01).
        batch_size: training batch size (default 128).
        query_batch: images per query call (default 64).
        device: torch device the student trains on (default ``cpu``).
    """

    arch: str = ""
    queries: int = 0
    epochs: int = 10
    query_batch: int = 64

    def __post_init__(self) -> None:
        if self.arch and ":" not in self.arch and self.arch not in MODELS:
            known = ", ".join(MODELS.names())
            raise ConfigError(f"unknown student arch {self.arch!r}; registered: {known}")
        if self.queries < 0:
            raise ConfigError(f"queries must be >= 0 (0: all images), got {self.queries}")
        if self.query_batch < 1:
            raise ConfigError(f"query_batch must be >= 1, got {self.query_batch}")
        super().__post_init__()


def _label(answer: object, num_classes: int) -> int | None:
    """``answer`` as a class index, or None where it names no class."""
    if isinstance(answer, bool) or not isinstance(answer, int):
        return None
    return answer if 0 <= answer < num_classes else None


@register_attack
class Distillation(Attack[DistillConfig]):
    """Train a fresh model on the labels the suspect gives the attacker's unlabelled images.

    After :meth:`apply`, ``spent`` is the number of images sent to the suspect and
    ``answered`` the number that came back with a usable label (both 0 before).
    """

    name = "distill"
    summary = "model extraction: train a fresh model on the API's labels for unlabelled data"
    config_class = DistillConfig
    needs = frozenset({"unlabelled", "suspect"})

    def __init__(
        self, config: DistillConfig | None = None, *, progress: bool = True, **params: Any
    ) -> None:
        super().__init__(config, progress=progress, **params)
        self.spent = 0
        self.answered = 0

    def apply(self, model: nn.Module, data: AttackData) -> nn.Module:
        assert data.unlabelled is not None and data.suspect is not None
        cfg = self.config_values
        spec = getattr(model, "spec", None)
        if not isinstance(spec, ModelSpec):
            raise ConfigError("distill needs a model with a spec (classes and input shape)")
        pool = data.unlabelled
        if pool.image_shape != (spec.in_channels, *spec.input_size):
            raise ConfigError(
                f"unlabelled images are {pool.image_shape}, the model takes "
                f"{(spec.in_channels, *spec.input_size)}"
            )
        generator = torch.Generator().manual_seed(cfg.seed)
        count = len(pool) if cfg.queries == 0 else min(cfg.queries, len(pool))
        order = torch.randperm(len(pool), generator=generator)[:count].sort().values
        images = pool.images[order]

        self.spent = self.answered = 0
        kept: list[torch.Tensor] = []
        labels: list[int] = []
        for start in range(0, count, cfg.query_batch):
            batch = images[start : start + cfg.query_batch]
            self.spent += len(batch)
            answers = list(data.suspect.query(batch))
            for row, answer in enumerate(answers[: len(batch)]):
                label = _label(answer, spec.num_classes)
                if label is not None:
                    kept.append(batch[row])
                    labels.append(label)
        self.answered = len(labels)
        if not labels:
            raise ConfigError(f"the suspect answered none of the {count} queried images")

        answered = ImageDataset(
            images=torch.stack(kept),
            labels=torch.tensor(labels, dtype=torch.int64),
            classes=(
                pool.classes
                if len(pool.classes) == spec.num_classes
                else tuple(str(c) for c in range(spec.num_classes))
            ),
            name="distilled",
        )
        student_spec = ModelSpec.with_defaults(
            cfg.arch or spec.arch, spec.num_classes, spec.in_channels, spec.input_size
        )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            student = build_model(student_spec)
        fit(
            student,
            answered,
            cfg.train_config(),
            progress=self.progress,
            description=f"attack {self.name}",
        )
        return student
