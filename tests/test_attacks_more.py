"""Quantisation, weight noise and the SoK fine-tuning family (FTLL / FTAL / RTLL / RTAL)."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from ownmark.attacks import quantize, transfer, weight_noise
from ownmark.attacks.base import Attack, AttackData, create_attack, list_attacks
from ownmark.attacks.prune import prunable_weights
from ownmark.data import DataSplits
from ownmark.data.base import ImageDataset
from ownmark.errors import ConfigError
from ownmark.models import Classifier, ModelSpec, build_model
from ownmark.train import TrainConfig


@pytest.fixture(scope="module")
def model() -> Classifier:
    torch.manual_seed(0)
    return build_model(ModelSpec.with_defaults("lenet5", 10, 1, (28, 28)))


@pytest.fixture(scope="module")
def data(small_digits: DataSplits) -> AttackData:
    first, second = small_digits.test.halves()
    return AttackData(train=first, test=second)


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _assert_untouched(model: nn.Module, before: dict[str, torch.Tensor]) -> None:
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name]), name


def _run(attack: Attack[Any], model: nn.Module, data: AttackData | None = None) -> nn.Module:
    attacked = attack(model, data)
    assert isinstance(attacked, nn.Module)
    return attacked


def _head_names(model: nn.Module) -> set[str]:
    head = transfer.last_linear(model)
    prefix = next(n for n, m in model.named_modules() if m is head)
    return {f"{prefix}.weight", f"{prefix}.bias"}


def test_registered() -> None:
    assert {"quantize", "weight-noise", "ftll", "ftal", "rtll", "rtal"} <= set(list_attacks())


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_quantize_levels_and_error(model: Classifier, bits: int) -> None:
    before = _state(model)
    attacked = _run(quantize.Quantization(bits=bits), model)
    _assert_untouched(model, before)
    for (name, original), (_, quantized) in zip(
        prunable_weights(model), prunable_weights(attacked), strict=True
    ):
        original, quantized = original.detach(), quantized.detach()
        assert torch.unique(quantized).numel() <= 2**bits, name
        step = float(original.max() - original.min()) / (2**bits - 1)
        assert float((quantized - original).abs().max()) <= step / 2 + 1e-6, name
        assert float(quantized.min()) == pytest.approx(float(original.min()), abs=1e-6)
        assert float(quantized.max()) == pytest.approx(float(original.max()), abs=1e-6)


def test_quantize_needs_nothing(model: Classifier) -> None:
    assert quantize.Quantization.needs == frozenset()
    _run(quantize.Quantization(), model)  # no data given


@pytest.mark.parametrize("scale", [0.05, 0.3])
def test_weight_noise_is_relative(model: Classifier, data: AttackData, scale: float) -> None:
    before = _state(model)
    attacked = _run(weight_noise.WeightNoise(scale=scale, epochs=0), model, data)
    _assert_untouched(model, before)
    ratios = []
    for (name, original), (_, noisy) in zip(
        prunable_weights(model), prunable_weights(attacked), strict=True
    ):
        original, noisy = original.detach(), noisy.detach()
        assert not torch.equal(original, noisy), name
        ratio = float((noisy - original).std() / original.std(correction=0))
        assert ratio == pytest.approx(scale, rel=0.25), name
        ratios.append(ratio)
    assert sum(ratios) / len(ratios) == pytest.approx(scale, rel=0.1)
    # Seeded: the same seed gives the same noise, another seed different noise.
    again = _run(weight_noise.WeightNoise(scale=scale, epochs=0), model, data)
    other = _run(weight_noise.WeightNoise(scale=scale, epochs=0, seed=1), model, data)
    _assert_untouched(again, _state(attacked))
    assert not torch.equal(prunable_weights(other)[0][1], prunable_weights(attacked)[0][1])


def test_weight_noise_retrains(model: Classifier, data: AttackData) -> None:
    noisy = _run(weight_noise.WeightNoise(epochs=0), model, data)
    retrained = _run(weight_noise.WeightNoise(epochs=1, progress=False), model, data)
    assert not torch.equal(prunable_weights(noisy)[0][1], prunable_weights(retrained)[0][1])


def test_ftll_changes_only_the_last_layer(model: Classifier, data: AttackData) -> None:
    before = _state(model)
    attacked = _run(transfer.FineTuneLastLayer(epochs=1, progress=False), model, data)
    _assert_untouched(model, before)
    head = _head_names(model)
    after = attacked.state_dict()
    for name, value in before.items():
        assert torch.equal(value, after[name]) == (name not in head), name
    assert all(p.requires_grad for p in attacked.parameters())  # freezing undone


def test_rtll_reinitialises_the_last_layer_only(model: Classifier, data: AttackData) -> None:
    before = _state(model)
    attacked = _run(transfer.RetrainLastLayer(epochs=0, progress=False), model, data)
    _assert_untouched(model, before)
    head = _head_names(model)
    after = attacked.state_dict()
    for name, value in before.items():
        assert torch.equal(value, after[name]) == (name not in head), name
    # Seeded re-initialisation: reproducible.
    again = _run(transfer.RetrainLastLayer(epochs=0, progress=False), model, data)
    _assert_untouched(again, _state(attacked))
    trained = _run(transfer.RetrainLastLayer(epochs=1, progress=False), model, data)
    assert all(p.requires_grad for p in trained.parameters())
    for name in before:
        assert torch.equal(before[name], trained.state_dict()[name]) == (name not in head)


@pytest.mark.parametrize("name", ["ftal", "rtal"])
def test_all_layer_attacks_change_early_layers(
    model: Classifier, data: AttackData, name: str
) -> None:
    before = _state(model)
    attacked = create_attack(name, progress=False, epochs="1")(model, data)
    assert isinstance(attacked, nn.Module)
    _assert_untouched(model, before)
    first_name, first = prunable_weights(model)[0]
    assert not torch.equal(first, dict(prunable_weights(attacked))[first_name])
    head = _head_names(model)
    assert all(not torch.equal(before[n], attacked.state_dict()[n]) for n in head)


@pytest.mark.parametrize("budget", [0.1, 1.0])
def test_budget_limits_the_training_data(
    model: Classifier, data: AttackData, budget: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[ImageDataset] = []

    def fake_fit(model: nn.Module, train: ImageDataset, config: TrainConfig, **_: Any) -> None:
        seen.append(train)

    monkeypatch.setattr(transfer, "fit", fake_fit)
    _run(transfer.FineTuneAllLayers(budget=budget, progress=False), model, data)
    assert data.train is not None
    assert len(seen) == 1 and len(seen[0]) == round(budget * len(data.train))
    subset = transfer.budget_subset(data.train, 0.1, seed=0)
    assert torch.equal(subset.images, transfer.budget_subset(data.train, 0.1, seed=0).images)
    assert not torch.equal(subset.images, transfer.budget_subset(data.train, 0.1, seed=1).images)
    assert len(transfer.budget_subset(data.train, 1e-6, seed=0)) == 1


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("quantize", {"bits": "1"}),
        ("quantize", {"bits": "17"}),
        ("weight-noise", {"scale": "0"}),
        ("weight-noise", {"epochs": "-1"}),
        ("weight-noise", {"lr": "0"}),
        ("ftll", {"budget": "0"}),
        ("ftal", {"budget": "1.5"}),
        ("rtll", {"epochs": "-1"}),
        ("rtal", {"lr": "-0.1"}),
        ("rtal", {"colour": "red"}),
    ],
)
def test_bad_parameters(name: str, params: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        create_attack(name, **params)


def test_train_data_is_required(model: Classifier) -> None:
    for cls in (
        weight_noise.WeightNoise,
        transfer.FineTuneLastLayer,
        transfer.FineTuneAllLayers,
        transfer.RetrainLastLayer,
        transfer.RetrainAllLayers,
    ):
        with pytest.raises(ConfigError, match="needs"):
            cls()(model)
