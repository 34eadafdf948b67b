"""Extraction (``distill``) and input-transforming evasion (``preprocess``) attacks.

The teacher is a LeNet-5 trained for 10 epochs on 1,000 digits (about 96% test accuracy).
Distilling it through its API's labels for 800 of those images (10 epochs, lr 0.05) gives a
student that agrees with it on at least 85% of 300 held-out digits (91-95% measured over
seeds 0-2); every preprocessing keeps at least 85% of its clean labels (97-100%
measured).
"""

from __future__ import annotations

from collections.abc import Sequence

import pytest
import torch
from torch import nn

from ownmark.attacks import distill
from ownmark.attacks.base import ATTACKS, AttackData
from ownmark.attacks.distill import Distillation, DistillConfig
from ownmark.attacks.preprocess import KINDS, Preprocess, PreprocessConfig, PreprocessedSuspect
from ownmark.data import DataSplits, ImageDataset
from ownmark.errors import ConfigError
from ownmark.metrics import predict
from ownmark.models import Classifier, ModelSpec, build_model
from ownmark.train import TrainConfig, fit
from ownmark.verify.suspects import InvalidAnswer, LocalModelSuspect, SuspectBase


@pytest.fixture(scope="module")
def teacher(small_digits: DataSplits) -> Classifier:
    torch.manual_seed(0)
    model = build_model(ModelSpec.with_defaults("lenet5"))
    fit(model, small_digits.train, TrainConfig(epochs=10, lr=0.05, batch_size=64), progress=False)
    return model.eval()


class Untouchable(nn.Module):
    """Stands in for the stolen model: it has the spec, but any direct use of it raises."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.spec = spec
        self.weight = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise AssertionError("the attack used the stolen model directly")


class Scripted(SuspectBase):
    """Answers from a fixed list per call, whatever the images."""

    def __init__(self, answers: Sequence[object]) -> None:
        super().__init__("scripted")
        self.answers = list(answers)
        self.seen: list[torch.Tensor] = []

    def _answer(self, images: torch.Tensor) -> Sequence[object]:
        self.seen.append(images.clone())
        return self.answers[: len(images)]


def test_distill_agrees_with_teacher_through_queries_only(
    teacher: Classifier, small_digits: DataSplits
) -> None:
    api = LocalModelSuspect(teacher)
    attack = Distillation(queries=800, query_batch=100, epochs=10, lr=0.05, batch_size=64)
    attack.progress = False
    stolen = Untouchable(teacher.spec)
    student = attack(stolen, AttackData(unlabelled=small_digits.train, suspect=api))
    assert isinstance(student, Classifier) and not student.training
    assert student.spec.arch == "lenet5"
    assert attack.spent == attack.answered == 800
    assert api.counters.images_sent == 800 and api.counters.requests_sent == 8
    held_out = small_digits.test.images
    agreement = float((predict(student, held_out) == predict(teacher, held_out)).float().mean())
    assert agreement >= 0.85
    assert attack.config()["queries"] == 800 and "device" not in attack.config()


def test_distill_default_budget_is_every_image_and_arch_can_change(
    teacher: Classifier, small_digits: DataSplits
) -> None:
    images = small_digits.train.subset(torch.arange(130))
    api = LocalModelSuspect(teacher)
    attack = Distillation(arch="zhang_mnist", epochs=1, progress=False)
    student = attack(Untouchable(teacher.spec), AttackData(unlabelled=images, suspect=api))
    assert isinstance(student, Classifier) and student.spec.arch == "zhang_mnist"
    assert attack.spent == 130 and api.counters.requests_sent == 3  # 64 + 64 + 2


def test_distill_drops_invalid_answers(
    small_digits: DataSplits, monkeypatch: pytest.MonkeyPatch
) -> None:
    trained: list[ImageDataset] = []

    def record(model: nn.Module, train: ImageDataset, *args: object, **kwargs: object) -> None:
        trained.append(train)

    monkeypatch.setattr(distill, "fit", record)
    # 8 answers for 9 images per call: only 3 and 0 name a class; the ninth answer is missing.
    api = Scripted([3, InvalidAnswer("tie"), "7", True, 10, -1, 5.0, 0])
    attack = Distillation(queries=18, query_batch=9, epochs=1, progress=False)
    data = AttackData(unlabelled=small_digits.train, suspect=api)
    attack(Untouchable(ModelSpec.with_defaults("lenet5")), data)
    assert attack.spent == 18 and attack.answered == 4
    (answered,) = trained
    assert answered.labels.tolist() == [3, 0, 3, 0]
    first, second = api.seen
    assert torch.equal(answered.images, torch.stack([first[0], first[7], second[0], second[7]]))
    assert answered.classes == small_digits.train.classes and answered.name == "distilled"


def test_distill_with_no_usable_answer_fails(small_digits: DataSplits) -> None:
    api = Scripted([InvalidAnswer("non-finite scores")] * 8)
    attack = Distillation(queries=8, epochs=1, progress=False)
    data = AttackData(unlabelled=small_digits.train, suspect=api)
    with pytest.raises(ConfigError, match="answered none"):
        attack(Untouchable(ModelSpec.with_defaults("lenet5")), data)


@pytest.mark.parametrize(
    "params",
    [
        {"queries": -1},
        {"query_batch": 0},
        {"arch": "no-such-net"},
        {"epochs": -1},
        {"lr": 0.0},
        {"batch_size": 0},
    ],
)
def test_distill_bad_parameters(params: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        DistillConfig(**params)  # type: ignore[arg-type]


@pytest.mark.parametrize("kind", KINDS)
def test_preprocess_changes_inputs_but_keeps_labels(
    teacher: Classifier, small_digits: DataSplits, kind: str
) -> None:
    suspect = Preprocess(kind=kind)(teacher)
    assert isinstance(suspect, PreprocessedSuspect)
    images = small_digits.test.images
    shown = suspect.transform(images)
    assert shown.dtype == torch.uint8 and shown.shape == images.shape
    assert float((shown != images).float().mean()) > 0.05
    answers = list(suspect.query(images))
    assert all(isinstance(a, int) for a in answers)
    kept = float((torch.tensor(answers) == predict(teacher, images)).float().mean())
    assert kept >= 0.85
    assert suspect.counters.images_sent == len(images)
    assert suspect.options()["preprocess"] == kind
    assert list(suspect.query(images[:0])) == []


def test_preprocess_noise_is_seeded(teacher: Classifier, small_digits: DataSplits) -> None:
    images = small_digits.test.images[:20]
    first = Preprocess(kind="noise", seed=3)(teacher)
    second = Preprocess(kind="noise", seed=3)(teacher)
    other = Preprocess(kind="noise", seed=4)(teacher)
    assert isinstance(first, PreprocessedSuspect) and isinstance(second, PreprocessedSuspect)
    assert isinstance(other, PreprocessedSuspect)
    assert torch.equal(first.transform(images), second.transform(images))
    assert not torch.equal(first.transform(images), other.transform(images))


def test_preprocess_jpeg_handles_rgb_and_stronger_settings_change_more() -> None:
    torch.manual_seed(0)
    rgb = torch.randint(0, 256, (2, 3, 16, 16), dtype=torch.uint8)
    cfg = PreprocessConfig(kind="jpeg", quality=50)
    model = build_model(ModelSpec.with_defaults("lenet5", 10, 3, (16, 16)))
    shown = PreprocessedSuspect(model, cfg).transform(rgb)
    assert shown.shape == rgb.shape and not torch.equal(shown, rgb)
    weak = PreprocessedSuspect(model, PreprocessConfig(kind="blur", sigma=0.5)).transform(rgb)
    strong = PreprocessedSuspect(model, PreprocessConfig(kind="blur", sigma=2.0)).transform(rgb)
    assert (weak.float() - rgb.float()).abs().mean() < (strong.float() - rgb.float()).abs().mean()


@pytest.mark.parametrize(
    "params",
    [
        {"kind": "crop"},
        {"quality": 49},
        {"quality": 96},
        {"sigma": 0.0},
        {"sigma": 6.0},
        {"std": 0.0},
        {"std": 100.0},
    ],
)
def test_preprocess_bad_parameters(params: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        PreprocessConfig(**params)  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        Preprocess(**params)  # type: ignore[arg-type]


def test_registered_with_typed_parameters() -> None:
    made = ATTACKS.create("distill", queries="100", arch="lenet5", lr="0.05")
    assert isinstance(made, Distillation) and made.config_values.queries == 100
    assert made.needs == {"unlabelled", "suspect"}
    evasion = ATTACKS.create("preprocess", kind="median", quality="60", sigma="2")
    assert isinstance(evasion, Preprocess) and evasion.config_values.quality == 60
    assert not evasion.needs
