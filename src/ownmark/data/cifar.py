"""CIFAR-10 and CIFAR-100, "python version": a folder of pickled batches, or the ``.tar.gz``.

The batches are Python-2 pickles. Unpickling can run arbitrary code, so they are read with
:class:`RestrictedUnpickler`, which only lets through what a numpy array needs.
"""

from __future__ import annotations

import io
import os
import pickle
import tarfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from ownmark.data.base import DataSplits, ImageDataset
from ownmark.errors import ConfigError, DataError

try:  # numpy >= 2 moved the implementation to numpy._core; old pickles still name numpy.core.
    from numpy._core.multiarray import _reconstruct
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core.multiarray import _reconstruct  # type: ignore[no-redef]


def _latin1_encode(text: object, encoding: str = "latin1", errors: str = "strict") -> bytes:
    """``_codecs.encode`` limited to str -> latin-1: how Python 3 writes ``bytes`` in protocol 2."""
    if not isinstance(text, str):
        raise pickle.UnpicklingError("_codecs.encode is only allowed on text")
    if encoding.lower().replace("_", "-") not in ("latin1", "latin-1", "iso-8859-1"):
        raise pickle.UnpicklingError(f"codec {encoding!r} is not allowed")
    return text.encode("latin-1", errors)


#: The only globals a CIFAR batch may reference: numpy array reconstruction, plus the latin-1
#: ``bytes`` constructor Python 3 uses when it re-pickles with protocol 2.
_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _latin1_encode,
}


class ForbiddenGlobalError(pickle.UnpicklingError):
    """A pickle referenced a global outside the allow-list."""


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves only the globals in ``_ALLOWED_GLOBALS``.

    Anything else (``os.system``, ``builtins.eval``, ...) raises before it is imported or called.
    """

    def find_class(self, module: str, name: str, /) -> Any:
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise ForbiddenGlobalError(f"{module}.{name}") from None


@dataclass(frozen=True)
class _Variant:
    title: str  # for messages
    command: str  # name for 'ownmark data download'
    folder: str  # the folder inside the official tarball
    tarball: str  # the official tarball name
    train_files: tuple[str, ...]
    test_file: str
    meta_file: str


_CIFAR10 = _Variant(
    title="CIFAR-10",
    command="cifar10",
    folder="cifar-10-batches-py",
    tarball="cifar-10-python.tar.gz",
    train_files=tuple(f"data_batch_{i}" for i in range(1, 6)),
    test_file="test_batch",
    meta_file="batches.meta",
)
_CIFAR100 = _Variant(
    title="CIFAR-100",
    command="cifar100",
    folder="cifar-100-python",
    tarball="cifar-100-python.tar.gz",
    train_files=("train",),
    test_file="test",
    meta_file="meta",
)


def _how_to_get(variant: _Variant, where: Path) -> str:
    folder = where if where.is_dir() else where.parent
    return (
        f"download it with 'ownmark data download {variant.command} --to {folder}' or pass "
        f"the {variant.folder} folder, its parent folder, or the {variant.tarball} file"
    )


def _corrupt(variant: _Variant, where: str, why: str, origin: Path) -> DataError:
    return DataError(
        f"{variant.title} file is corrupt: {where} ({why}); delete it and "
        f"{_how_to_get(variant, origin)}"
    )


def _locate(variant: _Variant, path: Path) -> Path:
    """The batch folder or the tarball that ``path`` designates."""
    if path.is_file():
        return path
    if path.is_dir():
        if (path / variant.meta_file).is_file() or path.name == variant.folder:
            return path
        if (path / variant.folder).is_dir():
            return path / variant.folder
        # A tarball saved by 'ownmark data download' (or a renamed copy of it) in this folder.
        stem = variant.tarball.removesuffix(".tar.gz")
        tarballs = sorted(path.glob(f"{stem}*.tar.gz"))
        if tarballs:
            return tarballs[0]
    raise DataError(
        f"{variant.title} data not found: {path} holds neither {variant.folder}/ nor "
        f"{variant.tarball}; {_how_to_get(variant, path)}"
    )


def _iter_members(
    variant: _Variant, source: Path, wanted: tuple[str, ...]
) -> Iterator[tuple[str, str, bytes]]:
    """Yield ``(file name, where, bytes)`` for each wanted file.

    From a tarball the members are read in archive order, straight from the stream, so a
    ``.tar.gz`` is decompressed only once and nothing is written to disk.
    """
    if source.is_dir():
        for name in wanted:
            file = source / name
            if not file.is_file():
                raise DataError(
                    f"{variant.title} file not found: {file}; {_how_to_get(variant, source.parent)}"
                )
            try:
                yield name, str(file), file.read_bytes()
            except OSError as exc:
                raise _corrupt(variant, str(file), str(exc), source.parent) from exc
        return

    remaining = set(wanted)
    try:
        with tarfile.open(source, "r:*") as archive:
            for member in archive:
                parts = Path(member.name).parts
                if not member.isfile() or len(parts) < 2 or parts[-2] != variant.folder:
                    continue
                if parts[-1] not in remaining:
                    continue
                stream = archive.extractfile(member)
                if stream is None:  # pragma: no cover - isfile() members always have data
                    continue
                remaining.discard(parts[-1])
                yield parts[-1], f"{source}:{member.name}", stream.read()
                if not remaining:
                    break
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        raise _corrupt(variant, str(source), str(exc) or type(exc).__name__, source) from exc
    if remaining:
        missing = sorted(remaining)
        raise DataError(
            f"{variant.title} file not found: {variant.folder}/{missing[0]} in {source}; "
            f"{_how_to_get(variant, source)}"
        )


def _unpickle(variant: _Variant, where: str, payload: bytes, origin: Path) -> dict[str, Any]:
    """Unpickle a batch with the restricted unpickler; keys come back as ``str``."""
    try:
        obj = RestrictedUnpickler(io.BytesIO(payload), encoding="latin1").load()
    except ForbiddenGlobalError as exc:
        raise DataError(
            f"{variant.title} file refused: {where} references {exc}, which a CIFAR batch never "
            f"needs (the file may be malicious); {_how_to_get(variant, origin)}"
        ) from exc
    # Damaged pickles raise almost anything (UnpicklingError, EOFError, ValueError, ...).
    except Exception as exc:
        raise _corrupt(variant, where, f"cannot unpickle: {exc}", origin) from exc
    if not isinstance(obj, dict):
        raise _corrupt(variant, where, f"expected a dict, got {type(obj).__name__}", origin)
    # Python-2 str keys load as str with latin1; keys re-pickled by Python 3 stay bytes.
    return {(k.decode("latin1") if isinstance(k, bytes) else str(k)): v for k, v in obj.items()}


def _get(variant: _Variant, batch: dict[str, Any], key: str, where: str, origin: Path) -> Any:
    if key not in batch:
        raise _corrupt(variant, where, f"no {key!r} entry", origin)
    return batch[key]


def _names(
    variant: _Variant, meta: dict[str, Any], key: str, where: str, origin: Path
) -> tuple[str, ...]:
    names = _get(variant, meta, key, where, origin)
    if not isinstance(names, (list, tuple)) or not names:
        raise _corrupt(variant, where, f"{key!r} is not a list of names", origin)
    return tuple(n.decode("latin1") if isinstance(n, bytes) else str(n) for n in names)


def _batch_arrays(
    variant: _Variant,
    batch: dict[str, Any],
    label_key: str,
    num_classes: int,
    where: str,
    origin: Path,
) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.int64]]:
    data = _get(variant, batch, "data", where, origin)
    labels_raw = _get(variant, batch, label_key, where, origin)
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2:
        raise _corrupt(variant, where, "'data' is not a uint8 matrix", origin)
    if data.shape[1] != 3 * 32 * 32:
        raise _corrupt(variant, where, f"rows of {data.shape[1]} values, expected 3072", origin)
    try:
        labels = np.asarray(labels_raw, dtype=np.int64).reshape(-1)
    except (TypeError, ValueError) as exc:
        raise _corrupt(variant, where, f"{label_key!r} is not a list of integers", origin) from exc
    if labels.shape[0] != data.shape[0]:
        raise _corrupt(
            variant, where, f"{data.shape[0]} images but {labels.shape[0]} labels", origin
        )
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise _corrupt(variant, where, f"labels outside 0..{num_classes - 1}", origin)
    return data, labels


def _dataset(
    images: list[npt.NDArray[np.uint8]],
    labels: list[npt.NDArray[np.int64]],
    classes: tuple[str, ...],
    name: str,
) -> ImageDataset:
    # Each row is 1024 red, then 1024 green, then 1024 blue values, each plane row-major.
    pixels = np.concatenate(images).reshape(-1, 3, 32, 32)
    return ImageDataset(
        images=torch.from_numpy(np.ascontiguousarray(pixels)),
        labels=torch.from_numpy(np.concatenate(labels)),
        classes=classes,
        name=name,
    )


def _load(
    variant: _Variant,
    path: str | os.PathLike[str],
    label_key: str,
    names_key: str,
    name: str,
) -> DataSplits:
    origin = Path(path)
    source = _locate(variant, origin)
    wanted = (variant.meta_file, *variant.train_files, variant.test_file)
    batches: dict[str, tuple[dict[str, Any], str]] = {}
    for file_name, where, payload in _iter_members(variant, source, wanted):
        batches[file_name] = (_unpickle(variant, where, payload, origin), where)
        del payload  # batches are ~30 MB each; drop the raw bytes as soon as they are parsed

    meta, meta_where = batches[variant.meta_file]
    classes = _names(variant, meta, names_key, meta_where, origin)

    def split(files: tuple[str, ...], split_name: str) -> ImageDataset:
        images: list[npt.NDArray[np.uint8]] = []
        labels: list[npt.NDArray[np.int64]] = []
        for file_name in files:
            batch, where = batches[file_name]
            x, y = _batch_arrays(variant, batch, label_key, len(classes), where, origin)
            images.append(x)
            labels.append(y)
        return _dataset(images, labels, classes, f"{name}/{split_name}")

    return DataSplits(
        train=split(variant.train_files, "train"), test=split((variant.test_file,), "test")
    )


def load_cifar10(path: str | os.PathLike[str]) -> DataSplits:
    """Load CIFAR-10 (50,000 train / 10,000 test images, ``(N, 3, 32, 32)`` uint8).

    Args:
        path: the ``cifar-10-batches-py`` folder, its parent folder, or a ``.tar.gz`` holding
            it (read in place, not extracted). Batches without ``filenames`` and with
            non-official checksums load fine: nothing is checked but the content.

    Raises:
        DataError: a file is missing, corrupt, or references a forbidden pickle global.
    """
    return _load(_CIFAR10, path, "labels", "label_names", "cifar10")


def load_cifar100(path: str | os.PathLike[str], label_mode: str = "fine") -> DataSplits:
    """Load CIFAR-100 (50,000 train / 10,000 test images, ``(N, 3, 32, 32)`` uint8).

    Args:
        path: the ``cifar-100-python`` folder, its parent folder, or a ``.tar.gz`` holding it.
        label_mode: ``"fine"`` (100 classes, the default) or ``"coarse"`` (20 superclasses).

    Raises:
        ConfigError: ``label_mode`` is neither ``"fine"`` nor ``"coarse"``.
        DataError: a file is missing, corrupt, or references a forbidden pickle global.
    """
    if label_mode not in ("fine", "coarse"):
        raise ConfigError(f"label_mode must be 'fine' or 'coarse', got {label_mode!r}")
    return _load(
        _CIFAR100,
        path,
        f"{label_mode}_labels",
        f"{label_mode}_label_names",
        "cifar100" if label_mode == "fine" else "cifar100-coarse",
    )
