"""Fine-pruning (Liu et al. 2018) and watermark overwriting."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from ownmark.attacks import fine_prune, overwrite
from ownmark.attacks.base import AttackData, create_attack
from ownmark.data import DataSplits
from ownmark.errors import ConfigError
from ownmark.metrics import accuracy
from ownmark.models import Classifier, ModelSpec, build_model
from ownmark.train import TrainConfig, fit


@pytest.fixture(scope="module")
def trained(small_digits: DataSplits) -> Classifier:
    torch.manual_seed(0)
    model = build_model(ModelSpec.with_defaults("lenet5", 10, 1, (28, 28)))
    fit(model, small_digits.train, TrainConfig(epochs=10, lr=0.05), progress=False)
    return model


@pytest.fixture(scope="module")
def data(small_digits: DataSplits) -> AttackData:
    return AttackData(train=small_digits.train, test=small_digits.test)


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize(("rate", "epochs"), [(0.5, 1), (0.3, 0), (0.0, 1)])
def test_fine_prune_zeroes_channels(
    trained: Classifier, data: AttackData, rate: float, epochs: int
) -> None:
    before = _state(trained)
    original = fine_prune.last_conv(trained)
    attacked = fine_prune.FinePruning(rate=rate, epochs=epochs, progress=False)(trained, data)
    assert isinstance(attacked, nn.Module)
    conv = fine_prune.last_conv(attacked)
    assert conv.bias is not None
    zero = (conv.weight.flatten(1) == 0).all(dim=1) & (conv.bias == 0)
    assert int(zero.sum()) == round(rate * conv.out_channels)
    # The zeroed channels are the least active ones on the attacker's clean data.
    assert data.train is not None
    means = fine_prune.mean_channel_activation(trained, original, data.train)
    if zero.any() and (~zero).any():
        assert means[zero].max() <= means[~zero].min()
    if epochs:  # fine-tuning changed the kept channels
        assert not torch.equal(conv.weight[~zero], original.weight[~zero])
    for name, value in trained.state_dict().items():
        assert torch.equal(value, before[name]), name


def test_fine_prune_keeps_accuracy(trained: Classifier, data: AttackData) -> None:
    assert data.test is not None
    attacked = fine_prune.FinePruning(rate=0.5, epochs=2, progress=False)(trained, data)
    assert isinstance(attacked, nn.Module)
    assert accuracy(attacked, data.test.images, data.test.labels) > 0.6


def test_overwrite_embeds_attacker_key(trained: Classifier, data: AttackData) -> None:
    before = _state(trained)
    attack = overwrite.Overwrite(num_keys=20, epochs=5, lr=0.05, key_ratio=0.2, progress=False)
    key = attack.attacker_key(data)
    assert len(key) == 20
    prior = accuracy(trained, key.images, key.labels)
    attacked = attack(trained, data)
    assert isinstance(attacked, nn.Module)
    after = accuracy(attacked, key.images, key.labels)
    assert after >= max(0.8, prior + 0.5), (prior, after)
    for name, value in trained.state_dict().items():
        assert torch.equal(value, before[name]), name


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("fine-prune", {"rate": "1.5"}),
        ("fine-prune", {"rate": "-0.1"}),
        ("fine-prune", {"epochs": "-1"}),
        ("fine-prune", {"lr": "0"}),
        ("overwrite", {"num_keys": "0"}),
        ("overwrite", {"num_decoys": "-1"}),
        ("overwrite", {"scheme": "nope"}),
        ("overwrite", {"key_ratio": "1"}),
        ("overwrite", {"epochs": "-2"}),
    ],
)
def test_bad_parameters(name: str, params: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        create_attack(name, **params)


def test_needs_train(trained: Classifier) -> None:
    for attack in (fine_prune.FinePruning(progress=False), overwrite.Overwrite(progress=False)):
        with pytest.raises(ConfigError, match="needs"):
            attack(trained, AttackData())
