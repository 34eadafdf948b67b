"""MNIST from the four standard IDX files (gzip-compressed or raw)."""

from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch

from ownmark.data.base import DataSplits, ImageDataset
from ownmark.errors import DataError

#: IDX magic numbers: two zero bytes, type code 0x08 (unsigned byte), number of dimensions.
IDX_IMAGES_MAGIC = 0x00000803
IDX_LABELS_MAGIC = 0x00000801

#: The four file names, without ``.gz``.
MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)

MNIST_CLASSES = tuple(str(digit) for digit in range(10))


def _how_to_get(root: Path) -> str:
    return (
        f"download it with 'ownmark data download mnist --to {root}' "
        "or pass the folder that holds the four IDX files"
    )


def find_idx_file(root: Path, stem: str) -> Path:
    """The raw file ``root/stem`` if present, else ``root/stem.gz``; DataError if neither exists.

    The raw file wins when both exist because it needs no decompression.
    """
    for candidate in (root / stem, root / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    raise DataError(f"MNIST file not found: {root / stem}(.gz); {_how_to_get(root)}")


def _read_bytes(path: Path, root: Path) -> bytes:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as stream:
                return stream.read()
        return path.read_bytes()
    # A truncated gzip stream raises EOFError, a damaged one BadGzipFile (OSError) or zlib.error.
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(
            f"MNIST file is corrupt or unreadable: {path} ({exc}); delete it and "
            f"{_how_to_get(root)}"
        ) from exc


def read_idx(path: str | os.PathLike[str], expected_magic: int) -> npt.NDArray[np.uint8]:
    """Parse one IDX file of unsigned bytes into an array shaped like its header says.

    Args:
        path: the ``.gz`` or raw IDX file.
        expected_magic: :data:`IDX_IMAGES_MAGIC` or :data:`IDX_LABELS_MAGIC`.

    Raises:
        DataError: the file cannot be read, is not gzip when named ``.gz``, has a different
            magic number, or its length does not match the header.
    """
    file = Path(path)
    root = file.parent
    raw = _read_bytes(file, root)

    def corrupt(why: str) -> DataError:
        return DataError(
            f"MNIST file is corrupt: {file} ({why}); delete it and {_how_to_get(root)}"
        )

    if len(raw) < 4:
        raise corrupt(f"only {len(raw)} bytes")
    magic = int.from_bytes(raw[:4], "big")
    if magic != expected_magic:
        raise corrupt(f"magic number 0x{magic:08x}, expected 0x{expected_magic:08x}")
    ndim = expected_magic & 0xFF
    header_len = 4 + 4 * ndim
    if len(raw) < header_len:
        raise corrupt("truncated header")
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected_len = header_len + int(np.prod(dims, dtype=np.int64))
    if len(raw) != expected_len:
        raise corrupt(f"{len(raw)} bytes, the header {dims} needs {expected_len}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header_len).reshape(dims)


def _load_split(root: Path, prefix: str) -> ImageDataset:
    images_path = find_idx_file(root, f"{prefix}-images-idx3-ubyte")
    labels_path = find_idx_file(root, f"{prefix}-labels-idx1-ubyte")
    images = read_idx(images_path, IDX_IMAGES_MAGIC)
    labels = read_idx(labels_path, IDX_LABELS_MAGIC)
    if images.shape[0] != labels.shape[0]:
        raise DataError(
            f"MNIST files do not match: {images_path} holds {images.shape[0]} images but "
            f"{labels_path} holds {labels.shape[0]} labels; {_how_to_get(root)}"
        )
    if labels.size and int(labels.max()) >= len(MNIST_CLASSES):
        raise DataError(
            f"MNIST file is corrupt: {labels_path} (label {int(labels.max())} is not a digit); "
            f"delete it and {_how_to_get(root)}"
        )
    split = "train" if prefix == "train" else "test"
    return ImageDataset(
        # frombuffer arrays are read-only; copy so torch owns writable memory.
        images=torch.from_numpy(images.copy()).unsqueeze(1),
        labels=torch.from_numpy(labels.astype(np.int64)),
        classes=MNIST_CLASSES,
        name=f"mnist/{split}",
    )


def load_mnist(root: str | os.PathLike[str]) -> DataSplits:
    """Load MNIST from ``root``, the folder holding the four IDX files (``.gz`` or raw).

    Returns 60,000 training and 10,000 test images for the official files, as ``(N, 1, 28, 28)``
    uint8 tensors with classes ``"0"`` .. ``"9"``.

    Raises:
        DataError: a file is missing or corrupt, or images and labels do not match; the message
            names the file and says how to get it.
    """
    folder = Path(root)
    if not folder.is_dir():
        raise DataError(f"MNIST folder not found: {folder}; {_how_to_get(folder)}")
    return DataSplits(train=_load_split(folder, "train"), test=_load_split(folder, "t10k"))
