"""Inspection and forgery attacks (``invert``, ``forge``) and the image-similarity module.

Measured (seed 0) on the planted patch backdoor of ``tests/backdoor.py`` (white 4x4 square
bottom-right -> class 3): inverting class 3 for 100 steps from a training image, a blank and
noise reaches softmax confidence >= 0.99 from every start, and the inverted images come no
closer to the 200 stamped trigger images (best SSIM about 0.2) than clean class-3 images do
(best about 0.48) or than the starts themselves (about 0.38): SSIM sees nothing of the
trigger, as Zhang et al. 2018 (section 5.5) found by eye. The forged key on the same model
(40 samples), uncalibrated, is "owned" against it (26/26, p 1.5e-8 at the assumed p0 0.5),
and only the date rule rejects it. Calibrated on references trained one epoch (near chance
accuracy) it is refused by calibration's reference-accuracy rule.
"""

from __future__ import annotations

import copy
import json
import math
from typing import Any

import pytest
import torch
from torch import nn

from backdoor import TARGET, Backdoored, backdoored_lenet
from ownmark.attacks.base import ATTACKS, AttackData
from ownmark.attacks.forge import ForgeConfig, Forgery
from ownmark.attacks.invert import InvertConfig, ModelInversion
from ownmark.data import DataSplits
from ownmark.errors import ConfigError
from ownmark.keys import KeySet
from ownmark.models import ModelSpec, build_model
from ownmark.similarity import pairwise_ssim, psnr, ssim
from ownmark.verify.evidence import date_problem


@pytest.fixture(scope="module")
def backdoor() -> Backdoored:
    return backdoored_lenet()


def _same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _trigger_key(bd: Backdoored) -> KeySet:
    n = len(bd.triggered)
    return KeySet(
        images=bd.triggered,
        labels=torch.full((n,), TARGET, dtype=torch.int64),
        originals=bd.clean[bd.clean_labels != TARGET],
        scheme="patch",
        params={},
        dataset="digits",
        num_classes=10,
        seed=0,
        decoys=bd.clean[:20],
        decoy_labels=bd.clean_labels[:20],
        decoy_key_labels=torch.full((20,), TARGET, dtype=torch.int64),
    )


# --- similarity ----------------------------------------------------------------------------


def test_ssim_properties() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (4, 3, 32, 32), generator=g, dtype=torch.uint8)
    assert torch.allclose(ssim(x, x), torch.ones(4, dtype=torch.float64))
    y = torch.randint(0, 256, (4, 3, 32, 32), generator=g, dtype=torch.uint8)
    assert torch.allclose(ssim(x, y), ssim(y, x))
    assert torch.allclose(ssim(x, y), ssim(x.double(), y.float()))  # uint8 or float 0..255
    assert ssim(x, y).abs().max() < 0.1  # independent noise images
    smooth = torch.linspace(0, 255, 32).expand(2, 1, 32, 32).contiguous()
    scores = [
        float(ssim(smooth, (smooth + s * torch.randn(smooth.shape, generator=g)).clamp(0, 255))[0])
        for s in (2.0, 10.0, 40.0)
    ]
    assert 1 > scores[0] > scores[1] > scores[2]
    # Constant images: SSIM = (2 mu_a mu_b + C1) / (mu_a^2 + mu_b^2 + C1) exactly.
    a, b = torch.full((1, 1, 16, 16), 100.0), torch.full((1, 1, 16, 16), 150.0)
    c1 = (0.01 * 255) ** 2
    assert float(ssim(a, b)[0]) == pytest.approx((2 * 100 * 150 + c1) / (100**2 + 150**2 + c1))
    assert pairwise_ssim(x[:2], y[:3]).shape == (2, 3)
    assert float(pairwise_ssim(x[:2], x[:2])[1, 1]) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="same shape"):
        ssim(x, y[:2])
    with pytest.raises(ValueError, match="window"):
        ssim(x[..., :8, :8], y[..., :8, :8])


def test_ssim_matches_an_independent_implementation() -> None:
    """scikit-image's algorithm (Gaussian filter sigma 1.5 truncated at radius 5, valid
    region only), written with scipy, on a noisy digit-sized image pair."""
    from scipy.ndimage import gaussian_filter

    g = torch.Generator().manual_seed(0)
    a = torch.randint(0, 256, (1, 1, 28, 28), generator=g).double()
    b = (a + 30 * torch.randn(a.shape, generator=g, dtype=torch.float64)).clamp(0, 255)
    x, y = a[0, 0].numpy(), b[0, 0].numpy()

    def blur(t: Any) -> Any:
        return gaussian_filter(t, 1.5, truncate=3.5)

    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mx, my = blur(x), blur(y)
    vx, vy, cov = blur(x * x) - mx * mx, blur(y * y) - my * my, blur(x * y) - mx * my
    full = ((2 * mx * my + c1) * (2 * cov + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    assert float(ssim(a, b)[0]) == pytest.approx(float(full[5:-5, 5:-5].mean()), abs=1e-12)


def test_psnr_of_known_mse() -> None:
    x = torch.randint(0, 200, (3, 1, 28, 28), generator=torch.Generator().manual_seed(1))
    shifted = x + 5  # MSE 25 exactly
    expected = 10 * math.log10(255**2 / 25)
    assert psnr(x.to(torch.uint8), shifted.to(torch.uint8)).tolist() == pytest.approx(
        [expected] * 3
    )
    assert psnr(x.float(), x.float()).tolist() == [math.inf] * 3
    assert float(psnr(x.float(), x.float() + 20)[0]) < expected


# --- invert --------------------------------------------------------------------------------


def test_invert_raises_the_target_confidence_from_every_start(
    backdoor: Backdoored, small_digits: DataSplits
) -> None:
    model = backdoor.model
    before = copy.deepcopy(model)
    attack = ModelInversion(steps=30, progress=False)
    out = attack(model, AttackData(train=small_digits.train))
    assert isinstance(out, nn.Module) and _same_weights(out, model)
    assert _same_weights(model, before)
    found = attack.findings()
    json.dumps(found)
    assert found["classes"] == list(range(10))
    assert set(found["starts"]) == {"train", "blank", "noise"}
    for start in found["starts"].values():
        for low, high in zip(start["start_confidence"], start["final_confidence"], strict=True):
            assert high > low or high > 0.99
        assert min(start["final_confidence"]) > 0.5
    images = attack.artifacts()
    assert set(images) == {"inverted-train", "inverted-blank", "inverted-noise", "starts"}
    for name, batch in images.items():
        assert batch.dtype == torch.uint8
        assert batch.shape == ((3 if name == "starts" else 10), 1, 28, 28)


def test_invert_does_not_reveal_the_planted_trigger(
    backdoor: Backdoored, small_digits: DataSplits
) -> None:
    assert backdoor.attack_success > 0.9
    attack = ModelInversion(target=TARGET, steps=60, progress=False)
    attack(backdoor.model, AttackData(train=small_digits.train))
    confidences = attack.findings()["starts"]
    assert all(c["final_confidence"][0] > 0.9 for c in confidences.values())
    score = attack.score(_trigger_key(backdoor))
    json.dumps(score)
    assert score["inversion_target"] == TARGET and score["inverted"]
    for field in ("inversion_ssim_best", "baseline_ssim_best", "start_ssim_best"):
        assert -1 <= score[field] <= 1
    assert score["inversion_ssim_mean"] <= score["inversion_ssim_best"]
    # Measured: inverted best ~0.20, clean class-3 images ~0.48, starts ~0.38.
    assert not score["reveals_trigger"]
    assert score["inversion_ssim_best"] < score["start_ssim_best"]
    # A key whose target class was not inverted: said so, nothing measured.
    wrong = ModelInversion(target=1, steps=1, starts="blank", progress=False)
    wrong(backdoor.model, AttackData(train=small_digits.train))
    assert wrong.score(_trigger_key(backdoor)) == {"inversion_target": TARGET, "inverted": False}


# --- forge ---------------------------------------------------------------------------------


def test_forged_key_only_the_date_rule_rejects_it_uncalibrated(
    backdoor: Backdoored, small_digits: DataSplits
) -> None:
    model = backdoor.model
    before = copy.deepcopy(model)
    attack = Forgery(calibrate=False, num_images=40, num_decoys=60, progress=False)
    out = attack(model, AttackData(train=small_digits.train))
    assert isinstance(out, nn.Module) and _same_weights(out, model)
    assert _same_weights(model, before)
    found = attack.findings()
    json.dumps(found)
    assert found["forged"] and found["samples"] >= 30
    assert found["verdict"] == "owned" and found["p_value"] < 1e-6
    assert found["rejected_by"] == ["date"] and found["claim_rejected"]
    assert "after the suspect model was first seen" in found["date_rule"]["problem"]
    assert attack.artifacts()["forged-key"].dtype == torch.uint8


def test_forged_key_calibrated_on_the_forgers_references(
    backdoor: Backdoored, small_digits: DataSplits
) -> None:
    train = small_digits.train.subset(torch.arange(400), "digits/train[:400]")
    attack = Forgery(epochs=1, num_images=40, steps=20, step_size=0.02, progress=False)
    attack(backdoor.model, AttackData(train=train, test=small_digits.test))
    found = attack.findings()
    json.dumps(found)
    calibration = found["calibration"]
    assert calibration["references"] == ["lenet5", "zhang_mnist"]
    assert len(calibration["reference_accuracy"]) == 2
    assert isinstance(calibration["passed"], bool)
    assert ("calibration" in found["rejected_by"]) == (not calibration["passed"])
    assert found["rejected_by"][-1] == "date" and found["claim_rejected"]


def test_quick_parameters_on_an_untrained_model(small_digits: DataSplits) -> None:
    torch.manual_seed(0)
    model = build_model(ModelSpec.with_defaults("lenet5"))
    first, _ = small_digits.test.halves()
    for name, params in {
        "invert": {"steps": "5", "starts": "blank,noise"},
        "forge": {"epochs": "1", "steps": "5", "num_images": "20", "num_decoys": "20"},
    }.items():
        attack = ATTACKS.create(name, **params)
        attack.progress = False
        attacked = attack(model, AttackData(train=first))
        assert isinstance(attacked, nn.Module) and not attacked.training
        json.dumps(attack.findings())
        with pytest.raises(ConfigError, match="needs the attacker's train"):
            attack(model, AttackData())
    assert "date" in attack.findings()["rejected_by"]


def test_date_rule() -> None:
    from datetime import datetime, timezone

    seen = datetime(2026, 6, 1, tzinfo=timezone.utc)
    assert date_problem(datetime(2026, 5, 1, tzinfo=timezone.utc), seen) is None
    assert "first seen" in str(date_problem(datetime(2026, 6, 2, tzinfo=timezone.utc), seen))


@pytest.mark.parametrize(
    ("cls", "params", "match"),
    [
        (InvertConfig, {"target": -2}, "target"),
        (InvertConfig, {"starts": "blank,cloud"}, "starts"),
        (InvertConfig, {"starts": ""}, "starts"),
        (InvertConfig, {"steps": 0}, "steps"),
        (InvertConfig, {"lr": 0.0}, "lr"),
        (InvertConfig, {"tv": -1.0}, "tv"),
        (InvertConfig, {"margin": 3.0}, "margin"),
        (ForgeConfig, {"eps": 0.0}, "eps"),
        (ForgeConfig, {"num_images": 0}, "num_images"),
        (ForgeConfig, {"num_decoys": 0}, "num_decoys"),
        (ForgeConfig, {"reference_archs": "lenet5,lenet5"}, "two distinct"),
        (ForgeConfig, {"epochs": 0}, "epochs"),
    ],
)
def test_bad_parameters(cls: type, params: dict[str, object], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        cls(**params)


def test_invert_target_outside_the_model(small_digits: DataSplits) -> None:
    torch.manual_seed(0)
    model = build_model(ModelSpec.with_defaults("lenet5"))
    with pytest.raises(ConfigError, match="not a class of the model"):
        ModelInversion(target=10, steps=1, progress=False)(
            model, AttackData(train=small_digits.train)
        )
