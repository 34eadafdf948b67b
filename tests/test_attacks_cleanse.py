"""Neural Cleanse on a planted patch backdoor: detection, unlearning and the attack contract."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from backdoor import TARGET, Backdoored, backdoored_lenet
from ownmark.attacks.base import AttackData, create_attack, list_attacks
from ownmark.attacks.neural_cleanse import NeuralCleanse, NeuralCleanseConfig, anomaly_indices
from ownmark.data import DataSplits, ImageDataset
from ownmark.errors import ConfigError
from ownmark.metrics import accuracy, predict
from ownmark.models import ModelSpec, build_model

#: Fewer steps than the default (300) keep the file fast; the backdoor is found all the same.
STEPS = 200
#: The contract test's quick parameters.
QUICK: dict[str, Any] = {"steps": "5", "epochs": "1"}


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """One intra-op thread: on a loaded 2-core machine two threads spin against each other and
    make these small batches ten times slower. Restored after the module."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def success(model: torch.nn.Module, backdoored: Backdoored) -> float:
    return float((predict(model, backdoored.triggered) == TARGET).float().mean())


@pytest.fixture(scope="module")
def cleansed(digits: DataSplits) -> SimpleNamespace:
    """The backdoored LeNet, a snapshot of its weights, and Neural Cleanse run on it once with
    1,000 labelled digits the backdoor was not trained on."""
    backdoored = backdoored_lenet()
    before = copy.deepcopy(backdoored.model.state_dict())
    attacker = digits.train.subset(torch.arange(2000, 3000), "digits/train[2000:3000]")
    attack = NeuralCleanse(steps=STEPS, epochs=2, progress=False)
    model = attack(backdoored.model, AttackData(train=attacker))
    return SimpleNamespace(
        backdoored=backdoored, before=before, attack=attack, model=model, findings=attack.findings()
    )


def test_registered_and_needs_train() -> None:
    assert "neural-cleanse" in list_attacks()
    attack = create_attack("neural-cleanse", progress=False, **QUICK)
    assert isinstance(attack, NeuralCleanse)
    assert attack.config_values.steps == 5 and attack.config_values.epochs == 1
    with pytest.raises(ConfigError, match="train"):
        attack(backdoored_lenet().model, AttackData())


def test_flags_the_planted_backdoor_class(cleansed: SimpleNamespace) -> None:
    found = cleansed.findings
    norms = found["mask_l1"]
    assert len(norms) == 10
    assert min(range(10), key=norms.__getitem__) == TARGET
    # The 4x4 patch has L1 16: the reversed trigger is about that small, far below the others.
    assert norms[TARGET] < 30
    assert norms[TARGET] < 0.5 * sorted(norms)[1]
    assert found["anomaly_index"][TARGET] > 2.0
    assert found["flagged"] == [TARGET]
    assert found["unlearned"] == [TARGET]
    assert found["trigger_success"][TARGET] > 0.9
    assert found["stamped_images"] == 200  # 20% of 1,000


def test_reversed_trigger_sits_where_the_patch_is(cleansed: SimpleNamespace) -> None:
    art = cleansed.attack.artifacts()
    assert set(art) == {"triggers", "masks"}
    for images in art.values():
        assert images.dtype == torch.uint8
        assert images.shape == (10, 1, 28, 28)
    mask = art["masks"][TARGET, 0].float()
    # The patch covers rows/columns 23..26; most of the mask's mass lies in that corner.
    assert mask[20:, 20:].sum() > 0.6 * mask.sum()


def test_unlearning_removes_the_backdoor_and_keeps_accuracy(cleansed: SimpleNamespace) -> None:
    backdoored = cleansed.backdoored
    assert backdoored.attack_success > 0.9
    after = success(cleansed.model, backdoored)
    assert after < 0.3
    clean_before = accuracy(backdoored.model, backdoored.clean, backdoored.clean_labels)
    clean_after = accuracy(cleansed.model, backdoored.clean, backdoored.clean_labels)
    assert clean_after > clean_before - 0.03


def test_original_model_untouched(cleansed: SimpleNamespace) -> None:
    state = cleansed.backdoored.model.state_dict()
    assert all(torch.equal(state[name], value) for name, value in cleansed.before.items())
    assert all(param.requires_grad for param in cleansed.backdoored.model.parameters())
    assert (
        success(cleansed.backdoored.model, cleansed.backdoored)
        == cleansed.backdoored.attack_success
    )


def test_findings_json_and_score(cleansed: SimpleNamespace) -> None:
    found = json.loads(json.dumps(cleansed.findings, allow_nan=False))
    assert found == cleansed.findings
    attack = cleansed.attack
    hit = attack.score(SimpleNamespace(labels=torch.tensor([TARGET, TARGET, 5])))
    assert hit["cleanse_key_label"] == TARGET
    assert hit["cleanse_flagged_key_label"] is True
    assert hit["cleanse_unlearned_key_label"] is True
    assert hit["cleanse_key_labels_flagged"] == 0.5
    miss = attack.score(SimpleNamespace(labels=torch.tensor([0, 0, 0])))
    assert miss["cleanse_flagged_key_label"] is False
    json.dumps(hit, allow_nan=False)


@pytest.fixture(scope="module")
def tiny(small_digits: DataSplits) -> tuple[torch.nn.Module, ImageDataset]:
    """An untrained LeNet and 150 labelled digits: the contract test's setting."""
    torch.manual_seed(0)
    model = build_model(ModelSpec.with_defaults("lenet5", 10, 1, (28, 28)))
    return model, small_digits.train.subset(torch.arange(150), "digits/train[:150]")


@pytest.mark.parametrize("unlearn", ["none", "top"])
def test_unlearn_modes(tiny: tuple[torch.nn.Module, ImageDataset], unlearn: str) -> None:
    model, train = tiny
    attack = create_attack("neural-cleanse", progress=False, unlearn=unlearn, **QUICK)
    attacked = attack(model, AttackData(train=train))
    found = attack.findings()
    changed = any(
        not torch.equal(a, b)
        for a, b in zip(model.state_dict().values(), attacked.state_dict().values(), strict=True)
    )
    if unlearn == "none":
        assert found["unlearned"] == [] and found["stamped_images"] == 0
        assert not changed
    else:
        assert len(found["unlearned"]) >= 1 and found["stamped_images"] == 30
        assert changed
    assert attack.artifacts()["masks"].shape == (10, 1, 28, 28)


def test_anomaly_index() -> None:
    detection = anomaly_indices([10.0, 100.0, 110.0, 90.0, 105.0, 95.0, 300.0], 2.0)
    assert detection.median == 100.0
    assert detection.mad == 10.0
    assert detection.indices[0] == pytest.approx(90 / 14.826)
    assert detection.flagged == [0]  # 300 is as anomalous, but above the median
    same = anomaly_indices([5.0] * 4, 2.0)
    assert same.flagged == [] and same.indices == [0.0] * 4


@pytest.mark.parametrize(
    "params",
    [
        {"steps": 0},
        {"mask_batch_size": 0},
        {"mask_lr": 0.0},
        {"init_cost": -1.0},
        {"cost_multiplier": 1.0},
        {"patience": 0},
        {"check_every": 0},
        {"target_success": 1.5},
        {"anomaly_threshold": 0.0},
        {"unlearn": "all"},
        {"unlearn_ratio": 0.0},
        {"epochs": -1},
        {"lr": 0.0},
    ],
)
def test_config_validation(params: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        NeuralCleanseConfig(**params)
    with pytest.raises(ConfigError):
        NeuralCleanse(**params)
