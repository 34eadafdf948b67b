"""Query-detecting evasion attacks: STRIP and MagNet in front of a stolen model's API."""

from __future__ import annotations

from functools import lru_cache

import pytest
import torch

from backdoor import backdoored_lenet
from ownmark.attacks import magnet, strip
from ownmark.attacks.base import AttackData
from ownmark.attacks.defence import refusal_rate
from ownmark.data import ImageDataset, load_dataset
from ownmark.errors import ConfigError
from ownmark.metrics import logits


def attacker_images(start: int, count: int) -> ImageDataset:
    """Clean digits the attacker holds (not the backdoor's training images)."""
    train = load_dataset("digits").train
    return train.subset(torch.arange(start, start + count), f"digits/train[{start}:]")


@lru_cache(maxsize=1)
def strip_api() -> tuple[strip.Strip, strip.StripSuspect]:
    attack = strip.Strip(overlays=8)
    api = attack(backdoored_lenet().model, AttackData(unlabelled=attacker_images(2000, 600)))
    assert isinstance(api, strip.StripSuspect)
    return attack, api


@lru_cache(maxsize=1)
def magnet_api() -> tuple[magnet.MagNet, magnet.MagNetSuspect]:
    attack = magnet.MagNet(epochs=10)
    api = attack(backdoored_lenet().model, AttackData(unlabelled=attacker_images(2000, 500)))
    assert isinstance(api, magnet.MagNetSuspect)
    return attack, api


def test_strip_entropy_is_low_on_triggered_queries() -> None:
    bd = backdoored_lenet()
    attack, api = strip_api()
    triggered = api.entropy(bd.triggered)
    clean = api.entropy(bd.clean)
    assert float(triggered.mean()) < 0.3 * float(clean.mean())
    assert float(api.flags(bd.triggered).float().mean()) >= 0.5
    rate = refusal_rate(api, bd.clean)
    assert rate is not None and rate <= 0.025
    found = attack.findings()
    assert found["calibration_refusal_rate"] <= 0.005
    assert found["threshold_bits"] == api.threshold
    assert api.options()["detector"] == "strip"


def test_strip_is_a_function_of_the_image() -> None:
    bd = backdoored_lenet()
    _, api = strip_api()
    images = bd.clean[:20]
    assert torch.equal(api.entropy(images), api.entropy(images.flip(0)).flip(0))


def test_flagged_queries_get_the_runner_up_class() -> None:
    bd = backdoored_lenet()
    _, api = strip_api()
    images = torch.cat([bd.clean[:40], bd.triggered[:40]])
    flagged = api.flags(images)
    assert 0 < int(flagged.sum()) < len(images)
    top2 = logits(bd.model, images).topk(2, dim=1).indices
    expected = torch.where(flagged, top2[:, 1], top2[:, 0])
    assert list(api.query(images)) == expected.tolist()


def test_magnet_flags_out_of_distribution_queries() -> None:
    bd = backdoored_lenet()
    attack, api = magnet_api()
    generator = torch.Generator().manual_seed(1)
    noise = torch.randint(0, 256, (100, 1, 28, 28), generator=generator, dtype=torch.uint8)
    patched = bd.clean[:100].clone()
    patched[..., 5:17, 5:17] = torch.randint(
        0, 256, (100, 1, 12, 12), generator=generator, dtype=torch.uint8
    )
    clean = refusal_rate(api, bd.clean)
    assert clean is not None and clean <= 0.03
    assert refusal_rate(api, noise) == 1.0
    patched_rate = refusal_rate(api, patched)
    assert patched_rate is not None and patched_rate >= 0.3 + clean
    assert attack.findings()["calibration_refusal_rate"] <= 0.005


def test_magnet_reformer_answers_on_the_reconstruction() -> None:
    bd = backdoored_lenet()
    _, detector = magnet_api()
    config = magnet.MagNetConfig(reform=True)
    api = magnet.MagNetSuspect(bd.model, detector.autoencoder, detector.threshold, config)
    images = bd.clean[:30]
    rebuilt = api.transform(images)
    assert rebuilt.dtype == torch.uint8 and rebuilt.shape == images.shape
    assert not torch.equal(rebuilt, images)
    top2 = logits(bd.model, rebuilt).topk(2, dim=1).indices
    expected = torch.where(api.flags(images), top2[:, 1], top2[:, 0])
    assert list(api.query(images)) == expected.tolist()


def test_magnet_autoencoder_takes_any_shape() -> None:
    autoencoder = magnet.AutoEncoder(3)
    assert autoencoder(torch.rand(2, 3, 30, 18)).shape == (2, 3, 30, 18)


def test_attacks_leave_the_model_untouched() -> None:
    bd = backdoored_lenet()
    before = {k: v.clone() for k, v in bd.model.state_dict().items()}
    data = AttackData(unlabelled=attacker_images(3000, 60))
    strip.Strip(overlays=4)(bd.model, data)
    magnet.MagNet(epochs=1)(bd.model, data)
    after = bd.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize(
    ("cls", "params"),
    [
        (strip.Strip, {"fpr": 0.0}),
        (strip.Strip, {"fpr": 0.5}),
        (strip.Strip, {"overlays": 1}),
        (strip.Strip, {"calibration": 1.0}),
        (strip.Strip, {"blend": "max"}),
        (magnet.MagNet, {"fpr": -0.1}),
        (magnet.MagNet, {"norm": 3}),
        (magnet.MagNet, {"epochs": 0}),
        (magnet.MagNet, {"calibration": 0.0}),
        (magnet.MagNet, {"weight_decay": -1.0}),
        (magnet.MagNet, {"lr": 0.0}),
    ],
)
def test_invalid_parameters_raise_config_error(cls: type, params: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        cls(**params)


def test_attacks_need_unlabelled_images() -> None:
    with pytest.raises(ConfigError, match="unlabelled"):
        strip.Strip()(backdoored_lenet().model, AttackData())
    with pytest.raises(ConfigError, match="overlay"):
        strip.Strip(overlays=16)(
            backdoored_lenet().model, AttackData(unlabelled=attacker_images(0, 20))
        )
