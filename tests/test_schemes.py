"""Every registered scheme: shapes, value ranges, labels, determinism, parameters."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from ownmark.data import DataSplits
from ownmark.errors import ConfigError
from ownmark.schemes import create_scheme, list_schemes, scheme_parameters
from ownmark.schemes.base import get_scheme_class
from quick_schemes import quick


def test_registry_has_zhang_schemes() -> None:
    assert {"content", "unrelated", "noise"} <= set(list_schemes())


@pytest.mark.parametrize("name", list_schemes())
def test_key_shapes_labels_and_ranges(name: str, digits: DataSplits) -> None:
    # A scheme with an extra class labels every key sample with it (class 10 here).
    extra = get_scheme_class(name).extra_classes
    params = {"num_keys": 20, **quick(name)} | ({} if extra else {"target_class": 3})
    key = create_scheme(name, **params).generate(digits, seed=1)
    assert key.images.shape == (20, 1, 28, 28)
    assert key.images.dtype == torch.uint8
    assert key.originals.shape == key.images.shape
    target = 10 if extra else 3
    assert torch.equal(key.labels, torch.full((20,), target, dtype=torch.int64))
    assert key.num_classes == 10
    assert key.scheme == name
    assert key.params["num_keys"] == 20
    # Not blank, not saturated: real images with a trigger.
    assert 0 < float(key.images.float().mean()) < 255


@pytest.mark.parametrize("name", list_schemes())
def test_deterministic_per_seed(name: str, digits: DataSplits) -> None:
    scheme = create_scheme(name, num_keys=10, **quick(name))
    a, b = scheme.generate(digits, seed=5), scheme.generate(digits, seed=5)
    c = scheme.generate(digits, seed=6)
    assert torch.equal(a.images, b.images)
    assert not torch.equal(a.images, c.images)


@pytest.mark.parametrize("name", ["content", "noise"])
def test_stamped_schemes_use_source_class_images(name: str, digits: DataSplits) -> None:
    key = create_scheme(name, num_keys=15, source_class=7).generate(digits, seed=0)
    sevens = digits.train.of_class(7).images
    for original in key.originals:
        assert (sevens == original).flatten(1).all(1).any(), "original is not a training 7"
    # The trigger changes the image.
    assert (key.images != key.originals).flatten(1).any(1).all()


@pytest.mark.parametrize("name", list_schemes())
def test_colour_data(name: str, digits: DataSplits) -> None:
    # A 3-channel 32x32 data set made from the digits (unrelated then uses MNIST digits).
    def colour(split):  # type: ignore[no-untyped-def]
        big = torch.nn.functional.interpolate(split.images.float(), size=32)
        return type(split)(big.repeat(1, 3, 1, 1).to(torch.uint8), split.labels, split.classes, "c")

    data = DataSplits(colour(digits.train), colour(digits.test))
    key = create_scheme(name, num_keys=8, **quick(name)).generate(data, seed=0)
    assert key.images.shape == (8, 3, 32, 32)


@pytest.mark.parametrize("seed", range(6))
def test_content_stamp_only_where_the_text_is(digits: DataSplits, seed: int) -> None:
    key = create_scheme("content", num_keys=30).generate(digits, seed=seed)
    changed = (key.images != key.originals).any(0)[0]
    rows = torch.nonzero(changed.any(1)).flatten()
    # Default (secret) place: along the top or the bottom edge, never over the digit's middle.
    assert int(rows.max()) <= 28 // 3 or int(rows.min()) >= 28 * 2 // 3 - 1
    assert int(key.images.max()) == 255
    _, y = (int(v) for v in key.params["position"].split(","))
    assert int(rows.min()) == y or int(rows.min()) > y  # the ink starts at or below the corner


def test_paper_content_key_is_stamped_at_the_bottom(digits: DataSplits) -> None:
    key = create_scheme(
        "content", num_keys=30, text="TEST", position="bottom", source_class=1, target_class=0
    ).generate(digits, seed=0)
    changed = (key.images != key.originals).any(0)[0]
    assert int(torch.nonzero(changed.any(1)).flatten().min()) >= 28 * 2 // 3 - 1
    assert key.params["secret"] == []
    assert torch.equal(key.labels, torch.zeros(30, dtype=torch.int64))
    # The control group: other images of the source class, answered "0" only by the mark.
    assert set(key.decoy_labels.tolist()) == {1}
    assert set(key.decoy_key_labels.tolist()) == {0}


def _train_class(digits: DataSplits, image: torch.Tensor) -> int:
    rows = (digits.train.images.flatten(1) == image.flatten()).all(1)
    return int(digits.train.labels[rows][0])


@pytest.mark.parametrize("name", ["content", "noise"])
def test_default_key_maps_every_class_to_a_secret_other_label(
    name: str, digits: DataSplits
) -> None:
    key = create_scheme(name, num_keys=40, num_decoys=30).generate(digits, seed=2)
    label_map = {int(k): v for k, v in key.params["label_map"].items()}
    assert sorted(label_map) == list(range(10))
    assert sorted(label_map.values()) == list(range(10))  # a permutation ...
    assert all(label_map[c] != c for c in label_map)  # ... without fixed points
    assert {"source_class", "target_class"} <= set(key.params["secret"])
    classes = [_train_class(digits, original) for original in key.originals]
    assert sorted(set(classes)) == list(range(10))  # key samples from every class
    assert [label_map[c] for c in classes] == key.labels.tolist()
    # Decoys: other training images of the same classes, with the key label of their class.
    assert len(key.decoys) == 30 and set(key.decoy_labels.tolist()) == set(range(10))
    assert key.decoy_key_labels.tolist() == [label_map[c] for c in key.decoy_labels.tolist()]
    originals = key.originals.flatten(1)
    for decoy in key.decoys.flatten(1):
        assert not (originals == decoy).all(1).any(), "a decoy is a key sample's original"


def test_unrelated_default_labels_are_secret_per_letter(digits: DataSplits) -> None:
    secret = create_scheme("unrelated", num_keys=60).generate(digits, seed=4)
    assert len(set(secret.labels.tolist())) > 1
    assert "target_class" in secret.params["secret"]
    # Decoys are ordinary digits of every class; their key label is one of the key's labels.
    assert set(secret.decoy_labels.tolist()) == set(range(10))
    assert set(secret.decoy_key_labels.tolist()) <= set(secret.labels.tolist())
    paper = create_scheme("unrelated", num_keys=60, target_class=0).generate(digits, seed=4)
    assert set(paper.labels.tolist()) == {0}


def test_content_logo(digits: DataSplits, tmp_path) -> None:  # type: ignore[no-untyped-def]
    logo = np.zeros((6, 6), dtype=np.uint8)
    logo[1:5, 1:5] = 200
    path = tmp_path / "logo.png"
    Image.fromarray(logo).save(path)
    scheme = create_scheme("content", num_keys=40, logo=str(path), position="0,0")
    key = scheme.generate(digits, seed=35)  # a seed whose samples have ink under the logo
    # A grey logo without alpha is white ink at its brightness as opacity: 200 on black, and
    # over a digit's stroke the stroke shows through; the rest of the image is untouched.
    opacity = 200 / 255
    under = key.originals[:, 0, 1:5, 1:5].float()
    expected = (under * (1 - opacity) + 255 * opacity).round().to(torch.uint8)
    assert torch.equal(key.images[:, 0, 1:5, 1:5], expected)
    assert bool((key.images[:, 0, 1:5, 1:5][under == 0] == 200).all())
    assert torch.equal(key.images[:, :, 10:, :], key.originals[:, :, 10:, :])


def test_content_logo_too_big(digits: DataSplits, tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "big.png"
    Image.fromarray(np.full((40, 40), 255, dtype=np.uint8)).save(path)
    with pytest.raises(ConfigError, match=r"40x40.*28x28"):
        create_scheme("content", logo=str(path)).generate(digits)


def test_noise_pattern_is_shared_and_has_requested_strength(digits: DataSplits) -> None:
    key = create_scheme("noise", num_keys=50, std=0.1).generate(digits, seed=0)
    diff = key.images.float() - key.originals.float()
    # Where no clipping happens (mid-grey pixels are rare in MNIST, so use the black ones,
    # clipped at 0 from below), the pattern is the same in every key image.
    dark = (key.originals == 0).all(0)[0]
    positive = (diff[:, 0][:, dark] > 0).float().mean(0)
    assert set(positive.unique().tolist()) <= {0.0, 1.0}
    assert 0.05 * 255 < float(diff[:, 0][:, dark].clamp(min=0).max()) < 0.6 * 255


def test_unrelated_letters_are_not_digits(digits: DataSplits) -> None:
    key = create_scheme("unrelated", num_keys=20).generate(digits, seed=0)
    assert key.params["source"] == "auto"
    # Letters, not training images: none equals a training digit.
    flat = digits.train.images.flatten(1)
    for image in key.images.flatten(1):
        assert not (flat == image).all(1).any()


def test_unknown_scheme_and_parameters() -> None:
    with pytest.raises(ConfigError, match=r"unknown scheme 'nope'.*content"):
        create_scheme("nope")
    with pytest.raises(ConfigError, match="no parameter 'colour'"):
        create_scheme("content", colour="red")
    with pytest.raises(ConfigError, match="font_size expects type int"):
        create_scheme("content", font_size="big")
    assert create_scheme("noise", std="0.3").config.std == pytest.approx(0.3)  # type: ignore[attr-defined]
    assert "text" in scheme_parameters("content")


def test_class_out_of_range(digits: DataSplits) -> None:
    with pytest.raises(ConfigError, match="target_class=10"):
        create_scheme("content", target_class=10).generate(digits)


def test_too_few_images_for_keys_and_decoys(digits: DataSplits) -> None:
    with pytest.raises(ConfigError, match=r"class 1 has .* training images"):
        create_scheme("noise", source_class=1, num_keys=300, num_decoys=300).generate(digits)
