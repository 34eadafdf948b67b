"""The new-label scheme (Zhong et al. 2020): keys, file round trip, and its claims in
miniature: the watermarked model answers the extra class, an innocent K-class model never
can, and an API that hides the extra class hides the watermark."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from ownmark.attacks import create_attack
from ownmark.attacks.base import AttackData
from ownmark.calibrate import calibrate_key
from ownmark.data import DataSplits
from ownmark.errors import ConfigError, KeyFileError
from ownmark.keys import KeySet, load_key, save_key
from ownmark.metrics import accuracy, predict
from ownmark.models import Classifier
from ownmark.schemes import create_scheme, scheme_for_key
from ownmark.train import TrainConfig
from ownmark.verify import LocalModelSuspect, verify_ownership
from ownmark.workflows import check_compatible, train_model, verify_served


def test_key_labels_every_sample_with_the_extra_class(digits: DataSplits) -> None:
    key = create_scheme("newlabel", num_keys=40, beta=0.1).generate(digits, seed=0)
    assert set(key.labels.tolist()) == {10}
    assert key.extra_classes == 1 and key.model_classes == 11
    # Every class gives key images; each trigger is its original plus the one secret pattern.
    assert len(set(predict_classes(key, digits))) == 10
    pattern = key.extra["pattern"]
    assert pattern.shape == (1, 28, 28)
    expected = (key.originals.float() + pattern).round().clamp(0, 255).to(torch.uint8)
    assert torch.equal(key.images, expected)
    # beta is the pattern's spread in pixel-range units.
    assert abs(float(pattern.std()) / 255 - 0.1) < 0.02
    # Decoys are ordinary images whose key label would also be the extra class.
    assert set(key.decoy_key_labels.tolist()) == {10}


def predict_classes(key: KeySet, digits: DataSplits) -> list[int]:
    """The true class of each key image's original (found in the training set)."""
    flat = digits.train.images.flatten(1)
    rows = [int((flat == o.flatten()).all(1).nonzero()[0]) for o in key.originals]
    return [int(digits.train.labels[r]) for r in rows]


def test_alpha_sets_the_key_size_and_bad_parameters_fail(digits: DataSplits) -> None:
    key = create_scheme("newlabel", alpha=0.005).generate(digits, seed=0)
    assert len(key) == round(0.005 * len(digits.train)) == key.params["num_keys"]
    assert key.params["alpha"] == 0.005
    for params, message in (
        ({"alpha": 0.0}, "alpha"),
        ({"beta": 1.5}, "beta"),
        ({"target_class": 3}, "drop target_class"),
    ):
        with pytest.raises(ConfigError, match=message):
            create_scheme("newlabel", **params)


def test_pattern_is_stored_under_the_commitment(digits: DataSplits, tmp_path: Path) -> None:
    key = create_scheme("newlabel", num_keys=20).generate(digits, seed=1)
    path = tmp_path / "k.safetensors"
    save_key(key, path)
    loaded = load_key(path)
    assert torch.equal(loaded.extra["pattern"], key.extra["pattern"])
    fresh, labels = scheme_for_key(loaded).fresh_triggers(
        loaded, digits, 12, torch.Generator().manual_seed(0)
    )
    assert set(labels.tolist()) == {10} and fresh.shape == (12, 1, 28, 28)
    # A changed pattern no longer matches the commitment: the file is refused.
    tensors = load_file(path)
    name = next(n for n in tensors if n.endswith("pattern"))
    tensors[name] = tensors[name] + 1.0
    with open(path, "rb") as f:
        header_len = int.from_bytes(f.read(8), "little")
        metadata = json.loads(f.read(header_len))["__metadata__"]
    save_file(tensors, path, metadata=metadata)
    with pytest.raises(KeyFileError):
        load_key(path)


@pytest.fixture(scope="module")
def embedded(digits: DataSplits) -> tuple[KeySet, Classifier, Classifier]:
    """A calibrated new-label key, a model carrying it, and an innocent 10-class model."""
    raw = create_scheme("newlabel", num_keys=60, beta=0.2).generate(digits, seed=2)
    config = TrainConfig(epochs=3, seed=2, key_ratio=0.2)
    clean, _ = train_model(digits, config, arch="zhang_mnist", progress=False)
    other, _ = train_model(digits, TrainConfig(epochs=3, seed=3), arch="lenet5", progress=False)
    key, _ = calibrate_key(raw, [clean, other], test=digits.test, allow_weak=True)
    marked, _ = train_model(digits, config, arch="zhang_mnist", key=key, progress=False)
    return key, marked, clean


def test_embedded_key_is_owned_and_the_innocent_model_is_not(
    embedded: tuple[KeySet, Classifier, Classifier],
) -> None:
    key, marked, clean = embedded
    assert marked.spec.num_classes == 11 and clean.spec.num_classes == 10
    assert accuracy(marked, key.images, key.labels) >= 0.8
    # An innocent model has no class 10: it can never match, and calibration still leaves a
    # positive p0 (an upper bound from zero matches), so one lucky answer cannot decide.
    assert int(predict(clean, key.images).max()) < 10
    assert 0.0 < key.p0 < 0.2
    check_compatible(clean, key=key, suspect=True)  # a K-class suspect is a valid target
    with pytest.raises(ConfigError, match="11 classes"):
        check_compatible(clean, key=key)  # but not a model to embed into
    assert verify_ownership(key, LocalModelSuspect(marked)).verdict.value == "owned"
    assert verify_ownership(key, LocalModelSuspect(clean)).verdict.value == "not owned"


def test_hiding_the_extra_class_hides_the_watermark(
    embedded: tuple[KeySet, Classifier, Classifier], digits: DataSplits
) -> None:
    key, marked, _ = embedded
    hidden = create_attack("hide-class")(marked, AttackData())
    answers = torch.tensor(hidden.query(key.images))
    assert int(answers.max()) < 10  # the extra class never shows
    clean_answers = torch.tensor(hidden.query(digits.test.images[:200]))
    # Normal queries barely change: the extra class was rarely their answer.
    assert float((clean_answers == predict(marked, digits.test.images[:200])).float().mean()) > 0.97
    assert verify_ownership(key, hidden).verdict.value != "owned"
    # Served over HTTP the same way: the API reports 10 classes, and the verdict agrees.
    assert verify_served(hidden, key).verdict.value != "owned"
