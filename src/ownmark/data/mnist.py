"""MNIST from the four standard IDX files (gzip-compressed or raw)."""

from __future__ import annotations

import gzip
import math
import os
import zlib
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch

from ownmark.data.base import DataSplits, ImageDataset, mebibytes, read_at_most
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

#: Most bytes one IDX file may unpack to. The files come from elsewhere and a ``.gz`` can be a
#: decompression bomb, so the size the header declares is checked before the data is read, and
#: reading stops one byte past it. The largest official file, train-images, is 47,040,016 bytes
#: (45 MiB); 256 MiB is 5.7x that and still holds the larger sets in the same format, such as
#: EMNIST Digits' 240,000 training images (179 MiB).
MNIST_MAX_IDX_BYTES = 256 << 20


#: Suffixes of archives: MNIST is never one (CIFAR's ``.tar.gz`` is), so no folder hint.
_ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".zip", ".tar.bz2", ".tar.xz")


def _how_to_get(root: Path) -> str:
    return (
        f"download it with 'ownmark data download mnist --to {root}' "
        "or pass the folder that holds the four IDX files"
    )


def _not_a_folder(path: Path) -> DataError:
    """What to say when ``--data-path`` for MNIST names a file, or an archive that is not there.

    MNIST is four IDX files in a folder; suggesting a download "into" ``X.tar.gz`` would
    create a folder with an archive's name, so point to a folder instead.
    """
    name = path.name.lower()
    stems = {f"{stem}{ext}" for stem in MNIST_FILES for ext in ("", ".gz")}
    if name in stems and path.is_file():
        return DataError(
            f"MNIST --data-path {path} is one of its IDX files; pass the folder that holds "
            f"all four: --data-path {path.parent}"
        )
    archive = name.endswith(_ARCHIVE_SUFFIXES)
    what = "is a file" if path.exists() else "does not exist"
    hint = (
        " (an archive; a .tar.gz is CIFAR's format: did you mean --data cifar10 or cifar100?)"
        if archive
        else ""
    )
    folder = path.parent / "mnist"
    return DataError(
        f"MNIST --data-path {path} {what}{hint}; MNIST is four IDX files in a folder: get "
        f"them with 'ownmark data download mnist --to {folder}' and pass --data-path {folder}"
    )


def find_idx_file(root: Path, stem: str) -> Path:
    """The raw file ``root/stem`` if present, else ``root/stem.gz``; DataError if neither exists.

    The raw file wins when both exist because it needs no decompression.
    """
    for candidate in (root / stem, root / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    raise DataError(f"MNIST file not found: {root / stem}(.gz); {_how_to_get(root)}")


def read_idx(path: str | os.PathLike[str], expected_magic: int) -> npt.NDArray[np.uint8]:
    """Parse one IDX file of unsigned bytes into an array shaped like its header says.

    The header is read first; the data is read only if its declared size is at most
    :data:`MNIST_MAX_IDX_BYTES`, and reading stops one byte past that size, so a gzip bomb
    is never inflated beyond it.

    Args:
        path: the ``.gz`` or raw IDX file.
        expected_magic: :data:`IDX_IMAGES_MAGIC` or :data:`IDX_LABELS_MAGIC`.

    Raises:
        DataError: the file cannot be read, is not gzip when named ``.gz``, has a different
            magic number, declares more than :data:`MNIST_MAX_IDX_BYTES`, or its length does
            not match the header.
    """
    file = Path(path)
    root = file.parent

    def corrupt(why: str) -> DataError:
        return DataError(
            f"MNIST file is corrupt: {file} ({why}); delete it and {_how_to_get(root)}"
        )

    ndim = expected_magic & 0xFF
    header_len = 4 + 4 * ndim
    try:
        with gzip.open(file, "rb") if file.suffix == ".gz" else file.open("rb") as stream:
            header = read_at_most(stream, header_len)
            if len(header) < 4:
                raise corrupt(f"only {len(header)} bytes")
            magic = int.from_bytes(header[:4], "big")
            if magic != expected_magic:
                raise corrupt(f"magic number 0x{magic:08x}, expected 0x{expected_magic:08x}")
            if len(header) < header_len:
                raise corrupt("truncated header")
            dims = tuple(int.from_bytes(header[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
            size = math.prod(dims)  # Python ints: four-byte dimensions cannot overflow
            expected_len = header_len + size
            if expected_len > MNIST_MAX_IDX_BYTES:
                raise DataError(
                    f"MNIST file refused: {file} declares {'x'.join(map(str, dims))} values "
                    f"({mebibytes(expected_len)}), more than the {mebibytes(MNIST_MAX_IDX_BYTES)} "
                    f"cap (the largest official file is 45 MiB); it is damaged or malicious: "
                    f"delete it and {_how_to_get(root)}"
                )
            payload = read_at_most(stream, size + 1)  # one byte more: is anything left over?
    # A truncated gzip stream raises EOFError, a damaged one BadGzipFile (OSError) or zlib.error.
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(
            f"MNIST file is corrupt or unreadable: {file} ({exc}); delete it and "
            f"{_how_to_get(root)}"
        ) from exc
    if len(payload) > size:
        raise corrupt(f"more than the {expected_len} bytes the header {dims} needs")
    if len(payload) < size:
        raise corrupt(f"{header_len + len(payload)} bytes, the header {dims} needs {expected_len}")
    return np.frombuffer(payload, dtype=np.uint8).reshape(dims)


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
    if folder.exists() and not folder.is_dir():
        raise _not_a_folder(folder)
    if not folder.is_dir():
        if folder.name.lower().endswith(_ARCHIVE_SUFFIXES):
            raise _not_a_folder(folder)
        raise DataError(f"MNIST folder not found: {folder}; {_how_to_get(folder)}")
    return DataSplits(train=_load_split(folder, "train"), test=_load_split(folder, "t10k"))
