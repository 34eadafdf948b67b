"""CIFAR-10 and CIFAR-100, "python version": a folder of pickled batches, or the ``.tar.gz``.

The batches are Python-2 pickles. Unpickling can run arbitrary code, so they are read with
:class:`RestrictedUnpickler`, which only lets through what a numpy array needs.
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import os
import pickle
import tarfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from ownmark.data.base import DataSplits, ImageDataset, Readable, mebibytes, read_at_most
from ownmark.errors import ConfigError, DataError

# Caps on what a CIFAR source may unpack to: the files come from elsewhere, and a tar or gzip
# bomb must end in a one-line error, not in a full memory or disk. The official files, for
# scale: CIFAR-10's data_batch_* pickles are ~31 MB (29.6 MiB) each, CIFAR-100's train pickle
# is ~155 MB (148 MiB), and either tarball (~163 MB / ~161 MB compressed) unpacks to ~186 MB
# (178 MiB) in 9 entries (CIFAR-10) or 5 (CIFAR-100).

#: Largest single member (or batch file in a folder): 1.7x CIFAR-100's 148 MiB train pickle. A
#: member is held in memory whole while it is unpickled, so this also bounds one batch's memory.
CIFAR_MAX_MEMBER_BYTES = 256 << 20
#: Most bytes decompressed from one tarball, tar headers and skipped members included (2.9x
#: the 178 MiB of an official one); batch files read from a folder count against it too.
CIFAR_MAX_TOTAL_BYTES = 512 << 20
#: Most tar entries read (the official tarballs hold 9 and 5): room for a re-packed archive
#: with extra files, far below what it takes to slow the scan down.
CIFAR_MAX_MEMBERS = 1_000
#: Most bytes of tar metadata (pax headers, GNU long names, sparse maps) in front of one entry:
#: real ones take well under 1 KiB, and tarfile reads them into memory before any check here.
CIFAR_MAX_HEADER_BYTES = 1 << 20

#: tarfile's read size on the decompressed stream; the header budget allows for read-ahead.
_TAR_BUFSIZE = 1 << 16
_HEADER_BUDGET = CIFAR_MAX_HEADER_BYTES + 4 * _TAR_BUFSIZE

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
    # A folder that does not exist yet (no suffix) is where the download should go.
    folder = where if where.is_dir() or not (where.exists() or where.suffix) else where.parent
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
    if not path.exists():
        raise DataError(
            f"{variant.title} data not found: {path} does not exist; {_how_to_get(variant, path)}"
        )
    raise DataError(
        f"{variant.title} data not found: {path} holds neither {variant.folder}/ nor "
        f"{variant.tarball}; {_how_to_get(variant, path)}"
    )


def _refused(variant: _Variant, source: Path, why: str) -> DataError:
    return DataError(
        f"{variant.title} data refused: {source} {why}; delete it and "
        f"{_how_to_get(variant, source)}"
    )


class _Refused(Exception):
    """A tarball broke one of the caps; the message completes "<file> ..." (see ``_refused``)."""


class _CappedStream:
    """The decompressed bytes of a tarball, counted on their way to :mod:`tarfile`.

    Raises :class:`_Refused` as soon as more than ``limit`` bytes were read in all or, while
    ``budget`` is set, more than ``budget`` bytes since it was set. Only ``read`` is used (the
    archive is opened as a stream, ``"r|"``); the rest is what tarfile expects of a file.
    """

    def __init__(self, raw: Readable, limit: int) -> None:
        self._raw = raw
        self._limit = limit
        self.total = 0
        self.budget: int | None = None

    def read(self, size: int, /) -> bytes:
        data = self._raw.read(size)
        self.total += len(data)
        if self.total > self._limit:
            raise _Refused(
                f"unpacks to more than {mebibytes(self._limit)} (an official tarball unpacks "
                "to 178 MiB): a decompression bomb"
            )
        if self.budget is not None:
            self.budget -= len(data)
            if self.budget < 0:
                raise _Refused(
                    f"has more than {mebibytes(CIFAR_MAX_HEADER_BYTES)} of tar headers in front "
                    "of one entry (real ones take under 1 KiB)"
                )
        return data

    def tell(self) -> int:
        return self.total

    def seek(self, pos: int, /) -> int:
        raise io.UnsupportedOperation("seek")

    def write(self, b: bytes, /) -> int:
        raise io.UnsupportedOperation("write")

    def close(self) -> None:
        pass


def _decompressing(raw: io.BufferedReader) -> io.BufferedIOBase:
    """``raw`` seen through the decompressor its first bytes call for (none for a plain tar).

    The decompressors inflate only as much as each ``read`` asks for, so the caps of
    :class:`_CappedStream` stop them as soon as they are passed.
    """
    magic = raw.peek(6)[:6]
    if magic.startswith(b"\x1f\x8b"):
        return gzip.GzipFile(fileobj=raw, mode="rb")
    if magic.startswith(b"BZh"):
        return bz2.BZ2File(raw)
    if magic.startswith(b"\xfd7zXZ\x00"):
        return lzma.LZMAFile(raw)
    return raw


def _member_problem(member: tarfile.TarInfo) -> str | None:
    """Why a tar entry is refused, or None: only plain files and folders, inside the archive."""
    name = member.name
    kind = None
    if name.startswith("/") or ".." in PurePosixPath(name).parts:
        kind = "a path that points outside the archive"
    elif member.issym():
        kind = f"a symbolic link to {member.linkname!r}"
    elif member.islnk():
        kind = f"a hard link to {member.linkname!r}"
    elif member.ischr() or member.isblk():
        kind = "a device file"
    elif member.isfifo():
        kind = "a FIFO"
    elif member.issparse():
        kind = "a sparse file"
    elif not (member.isreg() or member.isdir()):
        kind = f"an entry of type {member.type!r}"
    if kind is not None:
        return f"holds {name!r}, {kind} (CIFAR tarballs hold only files and folders)"
    if member.isreg() and member.size > CIFAR_MAX_MEMBER_BYTES:
        return (
            f"holds {name!r} of {mebibytes(member.size)}, more than the "
            f"{mebibytes(CIFAR_MAX_MEMBER_BYTES)} cap (the largest official file is 148 MiB)"
        )
    return None


def _iter_folder(
    variant: _Variant, source: Path, wanted: tuple[str, ...]
) -> Iterator[tuple[str, str, bytes]]:
    total = 0
    for name in wanted:
        file = source / name
        if not file.is_file():
            raise DataError(
                f"{variant.title} file not found: {file}; {_how_to_get(variant, source.parent)}"
            )
        try:
            with file.open("rb") as stream:
                size = os.fstat(stream.fileno()).st_size
                payload = b""
                if size <= CIFAR_MAX_MEMBER_BYTES:
                    payload = read_at_most(stream, CIFAR_MAX_MEMBER_BYTES + 1)
        except OSError as exc:
            raise _corrupt(variant, str(file), str(exc), source.parent) from exc
        size = max(size, len(payload))
        if size > CIFAR_MAX_MEMBER_BYTES:
            raise _refused(
                variant,
                file,
                f"is {mebibytes(size)}, more than the {mebibytes(CIFAR_MAX_MEMBER_BYTES)} cap on "
                "one batch (the largest official one is 148 MiB)",
            )
        total += size
        if total > CIFAR_MAX_TOTAL_BYTES:
            raise _refused(
                variant,
                source,
                f"holds more than {mebibytes(CIFAR_MAX_TOTAL_BYTES)} of batches (the official "
                "ones take 178 MiB)",
            )
        yield name, str(file), payload


def _iter_tarball(
    variant: _Variant, source: Path, wanted: tuple[str, ...]
) -> Iterator[tuple[str, str, bytes]]:
    remaining = set(wanted)
    try:
        with source.open("rb") as raw, _decompressing(raw) as unpacked:
            stream = _CappedStream(unpacked, CIFAR_MAX_TOTAL_BYTES)
            stream.budget = _HEADER_BUDGET
            # A stream ("r|") reads strictly forward, every byte through ``stream``'s caps.
            with tarfile.open(fileobj=stream, mode="r|", bufsize=_TAR_BUFSIZE) as archive:
                count = 0
                skip = 0  # bytes of the previous entry's data tarfile will skip to the next
                while remaining:
                    stream.budget = _HEADER_BUDGET + skip
                    member = archive.next()
                    stream.budget = None
                    if member is None:
                        break
                    count += 1
                    if count > CIFAR_MAX_MEMBERS:
                        raise _Refused(
                            f"holds more than {CIFAR_MAX_MEMBERS} entries (an official tarball "
                            "holds 9 or fewer)"
                        )
                    problem = _member_problem(member)
                    if problem is not None:
                        raise _Refused(problem)
                    skip = member.size if member.isreg() else 0
                    parts = PurePosixPath(member.name).parts
                    if not member.isreg() or len(parts) < 2 or parts[-2] != variant.folder:
                        continue
                    if parts[-1] not in remaining:
                        continue
                    data = archive.extractfile(member)
                    if data is None:  # pragma: no cover - regular members always have data
                        continue
                    remaining.discard(parts[-1])
                    yield parts[-1], f"{source}:{member.name}", read_at_most(data, member.size)
    except _Refused as exc:
        raise _refused(variant, source, str(exc)) from None
    except (tarfile.TarError, OSError, EOFError, zlib.error, lzma.LZMAError) as exc:
        raise _corrupt(variant, str(source), str(exc) or type(exc).__name__, source) from exc
    if remaining:
        missing = sorted(remaining)
        raise DataError(
            f"{variant.title} file not found: {variant.folder}/{missing[0]} in {source}; "
            f"{_how_to_get(variant, source)}"
        )


def _iter_members(
    variant: _Variant, source: Path, wanted: tuple[str, ...]
) -> Iterator[tuple[str, str, bytes]]:
    """Yield ``(file name, where, bytes)`` for each wanted file.

    From a tarball the members are read in archive order, straight from the stream, so a
    ``.tar.gz`` is decompressed only once and nothing is written to disk. Every read is bounded
    by the ``CIFAR_MAX_*`` caps, and links, devices and paths outside the archive are refused.
    """
    if source.is_dir():
        return _iter_folder(variant, source, wanted)
    return _iter_tarball(variant, source, wanted)


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
        DataError: a file is missing, corrupt, or references a forbidden pickle global; or the
            tarball passes one of the ``CIFAR_MAX_*`` caps or holds a link, a device file or a
            path outside the archive.
    """
    return _load(_CIFAR10, path, "labels", "label_names", "cifar10")


def load_cifar100(path: str | os.PathLike[str], label_mode: str = "fine") -> DataSplits:
    """Load CIFAR-100 (50,000 train / 10,000 test images, ``(N, 3, 32, 32)`` uint8).

    Args:
        path: the ``cifar-100-python`` folder, its parent folder, or a ``.tar.gz`` holding it.
        label_mode: ``"fine"`` (100 classes, the default) or ``"coarse"`` (20 superclasses).

    Raises:
        ConfigError: ``label_mode`` is neither ``"fine"`` nor ``"coarse"``.
        DataError: as for :func:`load_cifar10`.
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
