"""Calibrating p0 on clean reference models (leave-one-out Clopper-Pearson)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ownmark.calibrate import MIN_KEPT_SAMPLES, calibrate_key, innocent_tail
from ownmark.data import DataSplits
from ownmark.errors import ConfigError
from ownmark.keys import KeySet, load_key, save_key
from ownmark.models import Classifier, ModelSpec
from ownmark.schemes import create_scheme
from ownmark.verify import clopper_pearson_upper, image_sha256


class _Scripted(nn.Module):
    """Answers ``label`` for the images in ``hits`` (by hash) and ``other`` for the rest."""

    def __init__(self, hits: set[str], label: int, other: int) -> None:
        super().__init__()
        self.hits, self.label, self.other = hits, label, other
        self.anchor = nn.Parameter(torch.zeros(1))  # predict() reads the device from it

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = torch.zeros(len(x), 10)
        for row, image in enumerate(x):
            pixels = (image * 255).round().to(torch.uint8)
            logits[row, self.label if image_sha256(pixels) in self.hits else self.other] = 1.0
        return logits


def _reference(arch: str, key: KeySet, rows: list[int]) -> Classifier:
    hits = {image_sha256(key.images[i]) for i in rows}
    spec = ModelSpec(arch, 10, 1, (28, 28), (0.0,), (1.0,))
    return Classifier(spec, _Scripted(hits, label=int(key.labels[0]), other=5))


@pytest.fixture(scope="module")
def key(digits: DataSplits) -> KeySet:
    # One key label for all samples, so a scripted reference "matches" exactly its hits.
    return create_scheme("unrelated", num_keys=60, target_class=0).generate(digits, seed=0)


def test_drops_what_references_match_and_bounds_the_rest_leave_one_out(key: KeySet) -> None:
    references = [
        _reference("zhang_mnist", key, [0, 1, 2]),
        _reference("lenet5", key, [2, 3]),
        _reference("lenet5", key, [4]),
    ]
    calibrated, report = calibrate_key(key, references, names=["a", "b", "c"])
    assert (report.kept, report.dropped) == (55, 5) and len(calibrated) == 55
    dropped = {image_sha256(key.images[i]) for i in range(5)}
    assert not dropped & {image_sha256(image) for image in calibrated.images}
    # Leave-one-out: a's 3 hits are screened by b and c only, which catch sample 2 (b):
    # a scores 2 matches in 57 trials; b: 1 (sample 3) in 56; c: 1 (sample 4) in 56.
    loo = [(r.loo_matches, r.loo_trials) for r in report.references]
    assert loo == [(2, 57), (1, 56), (1, 56)]
    assert (report.matches, report.trials) == (4, 169)
    # Each reference is one draw of an innocent model: the largest of their bounds.
    assert report.p0 == pytest.approx(clopper_pearson_upper(2, 57, 0.999))
    assert report.p0 > clopper_pearson_upper(4, 169, 0.999)
    assert calibrated.p0 == report.p0 and calibrated.commitment != key.commitment
    assert '"trials": 169' in calibrated.p0_source


def test_calibrated_key_round_trips(key: KeySet, tmp_path: object) -> None:
    references = [_reference("zhang_mnist", key, []), _reference("lenet5", key, [7])]
    calibrated, report = calibrate_key(key, references)
    path = tmp_path / "k.key"  # type: ignore[operator]
    save_key(calibrated, path)
    loaded = load_key(path)
    assert loaded.p0 == report.p0 and loaded.p0_source == calibrated.p0_source
    assert loaded.commitment == calibrated.commitment and len(loaded) == 59


def test_refuses_too_few_references_or_architectures(key: KeySet) -> None:
    with pytest.raises(ConfigError, match="at least 2 clean reference models"):
        calibrate_key(key, [_reference("lenet5", key, [])])
    with pytest.raises(ConfigError, match="2 architectures"):
        calibrate_key(key, [_reference("lenet5", key, []), _reference("lenet5", key, [])])
    wrong = Classifier(
        ModelSpec("zhang_mnist", 5, 1, (28, 28), (0.0,), (1.0,)), _Scripted(set(), 0, 1)
    )
    with pytest.raises(ConfigError, match="the key has"):
        calibrate_key(key, [wrong, _reference("lenet5", key, [])])


def test_refuses_a_key_references_already_answer(key: KeySet) -> None:
    everything = list(range(len(key) - MIN_KEPT_SAMPLES + 1))
    references = [_reference("zhang_mnist", key, everything), _reference("lenet5", key, [])]
    with pytest.raises(ConfigError, match="does not tell models apart"):
        calibrate_key(key, references)


def test_real_reference_models_give_a_small_bound(small_digits: DataSplits) -> None:
    """Two quickly trained clean models of two architectures on real digits."""
    from ownmark.train import TrainConfig
    from ownmark.workflows import train_model

    key = create_scheme("content", num_keys=40).generate(small_digits, seed=1)
    references = [
        train_model(small_digits, TrainConfig(epochs=2, seed=s), arch=a, progress=False)[0]
        for a, s in (("lenet5", 10), ("zhang_mnist", 11))
    ]
    calibrated, report = calibrate_key(key, references)
    assert report.architectures == ("lenet5", "zhang_mnist")
    assert report.trials >= 2 * report.kept and 0 < calibrated.p0 < 0.3
    assert calibrated.p0 == max(r.upper_bound for r in report.references)


def test_reports_each_group_and_the_innocent_tail(key: KeySet) -> None:
    references = [
        _reference("zhang_mnist", key, [0]),
        _reference("lenet5", key, []),
        _reference("lenet5", key, [10, 11, 12, 13, 14, 15]),
    ]
    _, report = calibrate_key(key, references, groups=["clean", "clean", "other-key"])
    rates = report.group_rates()
    assert set(rates) == {"clean", "other-key"}
    assert rates["clean"][0] == 2 and rates["other-key"] == (1, 6, 59)
    assert report.innocent_tail_bound == pytest.approx(1 / 4)
    # p0 is the largest per-reference bound (6 of 59), so the fitted tail beyond it is small.
    assert report.innocent_tail == innocent_tail(
        [(r.loo_matches, r.loo_trials) for r in report.references], report.p0
    )
    assert 0.0 < report.innocent_tail < 0.05
    assert '"other-key"' in report.source() and "innocent_tail" in report.source()
    with pytest.raises(ConfigError, match="group"):
        calibrate_key(key, references, groups=["clean", "dirty", "clean"])


def test_innocent_tail_grows_with_the_spread_between_models() -> None:
    p0 = 0.1
    same = innocent_tail([(3, 100)] * 6, p0)
    spread = innocent_tail([(0, 100), (0, 100), (1, 100), (6, 100), (9, 100), (2, 100)], p0)
    assert same < spread < 1.0
    assert innocent_tail([(20, 100)] * 3, p0) > 0.9  # references mostly above p0
    assert innocent_tail([], p0) == 1.0


def test_refuses_references_near_chance(key: KeySet, digits: DataSplits) -> None:
    # The scripted references answer 5 for everything: 10% accuracy on the digits.
    references = [_reference("zhang_mnist", key, []), _reference("lenet5", key, [])]
    with pytest.raises(ConfigError, match=r"reference-0 classifies only 10\.\d% .*train it longer"):
        calibrate_key(key, references, test=digits.test)
    _, report = calibrate_key(key, references, test=digits.test, min_reference_accuracy=0.05)
    assert report.references[0].test_accuracy == pytest.approx(0.1, abs=0.02)


def test_refuses_a_calibrated_key_that_can_never_reach_alpha(key: KeySet) -> None:
    small = key.select(torch.arange(12))
    references = [_reference("zhang_mnist", small, []), _reference("lenet5", small, [])]
    with pytest.raises(ConfigError, match="can never reach alpha"):
        calibrate_key(small, references)
    weak, report = calibrate_key(small, references, allow_weak=True)
    assert len(weak) == 12 and report.p0 > 0.4
