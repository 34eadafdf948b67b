"""Steganalysis (SPAM features, supervised SVM, ATS): the detector the DeepStego benchmark
uses to measure how secret triggers are (seed 002, Table 3)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ownmark.data import DataSplits
from ownmark.errors import ConfigError
from ownmark.steganalysis import ats_detection, spam_features, supervised_detection


def plus_minus(images: torch.Tensor, amplitude: int, seed: int) -> torch.Tensor:
    """Add independent ±amplitude to every pixel (clipped): classic noise-like embedding."""
    generator = torch.Generator().manual_seed(seed)
    signs = torch.randint(0, 2, images.shape, generator=generator) * 2 - 1
    return (images.to(torch.int64) + amplitude * signs).clamp(0, 255).to(torch.uint8)


def test_spam_features_are_transition_probabilities(digits: DataSplits) -> None:
    features = spam_features(digits.test.images[:20])
    assert features.shape == (20, 686) and features.dtype == np.float64
    # Each group averages 4 directions' conditional distributions P(d2 | d0, d1): a (d0, d1)
    # row sums to 1 in each direction where the pair occurred, to 0 where it did not, so
    # the averaged row sums are multiples of 1/4 in [0, 1]; (0, 0) occurs in every direction.
    rows = features.reshape(20, 2, 49, 7).sum(3)
    assert np.allclose(rows * 4, np.round(rows * 4)) and rows.max() <= 1.0 + 1e-9
    assert np.allclose(rows[:, :, 3 * 7 + 3], 1.0)
    # A flat image has only zero differences: all mass on (0, 0) -> 0.
    flat = spam_features(torch.full((1, 1, 8, 8), 7, dtype=torch.uint8))
    expected = np.zeros((2, 343))
    expected[:, 3 * 49 + 3 * 7 + 3] = 1.0
    assert np.array_equal(flat.reshape(2, 343), expected)
    # Colour images: the channels' features are averaged.
    grey = digits.test.images[:3]
    assert np.allclose(spam_features(grey.repeat(1, 3, 1, 1)), spam_features(grey))


def test_supervised_detector_finds_noise_and_not_clean_images(digits: DataSplits) -> None:
    covers = digits.test.images
    found = supervised_detection(
        covers[:150],
        plus_minus(covers[150:300], 2, 0),
        covers[300:400],
        plus_minus(covers[400:500], 2, 1),
    )
    assert found.accuracy > 0.9 and found.test_images == 200 and found.method == "supervised"
    assert found.true_positive_rate > 0.85 and found.false_positive_rate < 0.15
    # "Triggers" that are just other clean images: nothing to find, about chance.
    blind = supervised_detection(covers[:150], covers[150:300], covers[300:400], covers[400:500])
    assert 0.3 < blind.accuracy < 0.7


def test_ats_needs_no_labels_only_the_embedding(digits: DataSplits) -> None:
    covers = digits.test.images
    counter = iter(range(100))

    def embed(images: torch.Tensor) -> torch.Tensor:
        return plus_minus(images, 2, next(counter))

    found = ats_detection(covers[:100], plus_minus(covers[100:200], 2, 99), embed)
    assert found.method == "ats" and found.accuracy > 0.8


@pytest.mark.parametrize(
    ("covers", "triggers", "message"),
    [
        (torch.zeros(10, 1, 8, 8), torch.zeros(10, 1, 8, 8, dtype=torch.uint8), "uint8"),
        (torch.zeros(3, 1, 8, 8, dtype=torch.uint8),) * 2 + ("at least 6",),
        (
            torch.zeros(8, 1, 8, 8, dtype=torch.uint8),
            torch.zeros(8, 3, 8, 8, dtype=torch.uint8),
            "one shape",
        ),
        (torch.zeros(8, 1, 3, 3, dtype=torch.uint8),) * 2 + ("too small",),
    ],
)
def test_bad_inputs_fail_clearly(
    covers: torch.Tensor, triggers: torch.Tensor, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        supervised_detection(covers, triggers, covers, triggers)
