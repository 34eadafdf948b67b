"""Resumable, checksum-verified downloads of the public data sets (urllib only)."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import http.client
import os
import stat
import sys
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from ownmark.errors import ConfigError, DataError

_CHUNK = 1 << 16

# The ``.part`` file sits in a folder others may write to (a shared data folder). It is opened
# without following a symbolic link at its name, created only if nothing is there (O_EXCL), and
# refused if it has other hard links, so that a link planted there cannot make the download
# overwrite, append to, or create some other file. (0 where the platform has no such flag.)
_NOFOLLOW: int = getattr(os, "O_NOFOLLOW", 0)
_CLOEXEC: int = getattr(os, "O_CLOEXEC", 0)
_BINARY: int = getattr(os, "O_BINARY", 0)


@dataclass(frozen=True)
class RemoteFile:
    """One file of a data set: its name (on the server and on disk) and its official MD5."""

    name: str
    md5: str


@dataclass(frozen=True)
class RemoteDataset:
    """Where a data set's files are published."""

    base_url: str
    files: tuple[RemoteFile, ...]


#: The official files. ``download_dataset(..., mirror=URL)`` replaces ``base_url`` only.
DOWNLOADS: dict[str, RemoteDataset] = {
    "mnist": RemoteDataset(
        base_url="https://ossci-datasets.s3.amazonaws.com/mnist/",
        files=(
            RemoteFile("train-images-idx3-ubyte.gz", "f68b3c2dcbeaaa9fbdd348bbdeb94873"),
            RemoteFile("train-labels-idx1-ubyte.gz", "d53e105ee54ea40749a09fcbcd1e9432"),
            RemoteFile("t10k-images-idx3-ubyte.gz", "9fb629c4189551a2d022fa330f9573f3"),
            RemoteFile("t10k-labels-idx1-ubyte.gz", "ec29112dd5afa0611ce80d1b7f02629c"),
        ),
    ),
    "cifar10": RemoteDataset(
        base_url="https://www.cs.toronto.edu/~kriz/",
        files=(RemoteFile("cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a"),),
    ),
    "cifar100": RemoteDataset(
        base_url="https://www.cs.toronto.edu/~kriz/",
        files=(RemoteFile("cifar-100-python.tar.gz", "eb9058c3a382ffc7106e4002c42a8d85"),),
    ),
}


def file_md5(path: Path) -> str:
    """Hex MD5 of a file, read in chunks."""
    digest = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _base_url(dataset: RemoteDataset, mirror: str | None) -> str:
    if mirror is None:
        return dataset.base_url
    if "://" not in mirror:  # a local folder
        return Path(mirror).resolve().as_uri()
    return mirror


def _open(url: str, offset: int, timeout: float) -> Any:
    request = urllib.request.Request(url, headers={"User-Agent": "ownmark"})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    return urllib.request.urlopen(request, timeout=timeout)


def _start(url: str, offset: int, timeout: float) -> tuple[Any, bool] | None:
    """Open ``url`` asking for the bytes from ``offset`` on (all of them when 0).

    Returns ``(response, resumed)``, or None when the server says the range is past the end,
    i.e. the ``.part`` already holds the whole file.
    """
    try:
        response = _open(url, offset, timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:
            exc.close()
            return None
        raise
    if not offset or getattr(response, "status", None) != 206:
        return response, False  # 200: the server sent the whole file, so start over
    if response.headers.get("Content-Range", "").startswith(f"bytes {offset}-"):
        return response, True
    # Not the range we asked for: start over rather than splice wrong bytes.
    response.close()
    return _open(url, 0, timeout), False


def _unsafe_part(part: Path, url: str, why: str) -> DataError:
    return DataError(
        f"refusing to write the download of {url} to {part}: {why}, not a partial download "
        "ownmark started (it may have been planted to redirect the download onto another "
        "file); remove it and run the same command again"
    )


def _part_size(part: Path, url: str) -> int:
    """Bytes already in ``part`` (0 when it does not exist), checked without following links.

    Raises:
        DataError: ``part`` is a symbolic link, not a regular file, or has other hard links.
    """
    try:
        info = os.lstat(part)
    except FileNotFoundError:
        return 0
    except OSError as exc:
        raise DataError(f"cannot inspect partial download {part}: {exc}") from exc
    _check_part(part, url, info)
    return info.st_size


def _check_part(part: Path, url: str, info: os.stat_result) -> None:
    if stat.S_ISLNK(info.st_mode):
        try:
            target = os.readlink(part)
        except OSError:  # pragma: no cover - gone or changed since lstat
            target = "?"
        raise _unsafe_part(part, url, f"it is a symbolic link to {target}")
    if not stat.S_ISREG(info.st_mode):
        raise _unsafe_part(part, url, "it is not a regular file")
    if info.st_nlink > 1:
        links = info.st_nlink
        raise _unsafe_part(part, url, f"it has {links} hard links, so it is also another file")


def _open_part(part: Path, url: str, flags: int) -> int:
    """``os.open`` of ``part`` that never follows a link at its name; the fd is checked too."""
    try:
        fd = os.open(part, flags | _NOFOLLOW | _CLOEXEC | _BINARY, 0o644)
    except FileExistsError as exc:  # O_EXCL: something appeared after it was removed
        raise _unsafe_part(part, url, "it appeared while the download started") from exc
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.EMLINK):  # O_NOFOLLOW met a link (Linux, BSD)
            raise _unsafe_part(part, url, "it is a symbolic link") from exc
        raise
    try:
        _check_part(part, url, os.fstat(fd))
    except BaseException:
        os.close(fd)
        raise
    return fd


def _create_part(part: Path, url: str, offset: int | None) -> int:
    """A write-only fd on ``part``: appending after ``offset`` bytes, or on a new empty file."""
    if offset is not None:
        fd = _open_part(part, url, os.O_WRONLY | os.O_APPEND)
        if os.fstat(fd).st_size != offset:
            os.close(fd)
            raise DataError(
                f"partial download {part} changed while the download of {url} started; run the "
                "same command again"
            )
        return fd
    # Unlinking removes whatever is at the name (a stale .part, or a link: never its target).
    with contextlib.suppress(FileNotFoundError):
        part.unlink()
    return _open_part(part, url, os.O_WRONLY | os.O_CREAT | os.O_EXCL)


def _part_md5(part: Path, url: str) -> str:
    """Hex MD5 of ``part``, opened without following a link at its name."""
    digest = hashlib.md5(usedforsecurity=False)
    with os.fdopen(_open_part(part, url, os.O_RDONLY), "rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _fetch(url: str, part: Path, timeout: float, progress: bool) -> None:
    """Stream ``url`` into ``part``, resuming from the bytes already there when the server allows.

    Raises:
        DataError: network error, or the server sent fewer bytes than announced (the ``.part``
            file is kept so that the next call resumes).
    """
    offset = _part_size(part, url)
    expected: int | None = None
    received = 0
    try:
        started = _start(url, offset, timeout)
        if started is None:
            return
        response, resumed = started
        if not resumed:
            offset = 0
        with response:
            length = response.headers.get("Content-Length") if response.headers else None
            expected = int(length) if length and length.isdigit() else None
            with (
                os.fdopen(_create_part(part, url, offset if resumed else None), "ab") as sink,
                tqdm(
                    total=None if expected is None else offset + expected,
                    initial=offset,
                    unit="B",
                    unit_scale=True,
                    unit_divisor=1024,
                    desc=part.name.removesuffix(".part"),
                    file=sys.stderr,
                    disable=not progress,
                    leave=False,
                ) as bar,
            ):
                for chunk in iter(lambda: response.read(_CHUNK), b""):
                    sink.write(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
    except urllib.error.HTTPError as exc:
        raise DataError(
            f"download of {url} failed: HTTP {exc.code} {exc.reason}; check the address "
            "(or --mirror) and try again"
        ) from exc
    except urllib.error.URLError as exc:
        raise DataError(
            f"download of {url} failed: {exc.reason}; check the network (or --mirror) and run "
            "the same command again to resume"
        ) from exc
    except (OSError, http.client.HTTPException, ValueError) as exc:
        raise DataError(
            f"download of {url} failed: {exc or type(exc).__name__}; run the same command again "
            f"to resume (partial file kept: {part})"
        ) from exc
    if expected is not None and received < expected:
        raise DataError(
            f"download of {url} stopped after {offset + received} of {offset + expected} bytes; "
            f"run the same command again to resume (partial file kept: {part})"
        )


def download_dataset(
    name: str,
    to_dir: str | os.PathLike[str],
    mirror: str | None = None,
    progress: bool = True,
    timeout: float = 60.0,
) -> list[Path]:
    """Download the files of ``name`` (``mnist``, ``cifar10`` or ``cifar100``) into ``to_dir``.

    Each file is streamed into ``<file>.part`` (resumed with an HTTP Range request if a
    ``.part`` is already there), checked against its official MD5, then renamed to its final
    name. The ``.part`` is never opened through a symbolic link, nor written when it has other
    hard links: such a ``.part`` is refused with a DataError, and its target left untouched. A
    final file that is already there with the right MD5 is kept without any request.

    Args:
        name: the data set.
        to_dir: the folder to save into (created if needed); pass the same folder to the loader.
        mirror: base address to use instead of the official one (default None); the file names
            stay the same. A plain folder path is read as a local mirror.
        progress: show a progress bar on stderr (default True).
        timeout: seconds to wait for the server on each connection or read (default 60).

    Returns:
        The final paths of the files, in the data set's order.

    Raises:
        ConfigError: unknown ``name``.
        DataError: network error, a checksum mismatch (the ``.part`` is deleted), or a
            ``.part`` that is a link or not a regular file.
    """
    if name not in DOWNLOADS:
        raise ConfigError(
            f"cannot download data set {name!r}; downloadable: {', '.join(sorted(DOWNLOADS))}"
        )
    dataset = DOWNLOADS[name]
    folder = Path(to_dir)
    # The folders this call creates, deepest first: removed again if the download fails
    # before anything is saved in them (an offline run must leave no empty folders).
    created = [p for p in (folder, *folder.parents) if not p.exists()]
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        _remove_empty(created)
        raise DataError(f"cannot create download folder {folder}: {exc}") from exc
    try:
        return _download_files(dataset, folder, mirror, progress, timeout)
    except BaseException:
        _remove_empty(created)
        raise


def _remove_empty(folders: list[Path]) -> None:
    """Remove each of ``folders`` (deepest first) that is empty; a partial download stays."""
    for path in folders:
        try:
            path.rmdir()
        except OSError:  # not empty (a resumable .part), or already gone
            return


def _download_files(
    dataset: RemoteDataset, folder: Path, mirror: str | None, progress: bool, timeout: float
) -> list[Path]:
    """The loop of :func:`download_dataset` over the data set's files, into ``folder``."""
    base = _base_url(dataset, mirror)
    paths: list[Path] = []
    for remote in dataset.files:
        final = folder / remote.name
        paths.append(final)
        if final.is_file() and file_md5(final) == remote.md5:
            continue
        url = f"{base.rstrip('/')}/{urllib.parse.quote(remote.name)}"
        part = final.with_name(f"{final.name}.part")
        _fetch(url, part, timeout, progress)
        actual = _part_md5(part, url)
        if actual != remote.md5:
            part.unlink()
            raise DataError(
                f"checksum mismatch for {final} from {url}: expected md5 {remote.md5}, got "
                f"{actual}; the download was deleted, run the same command again (or use "
                "another --mirror)"
            )
        os.replace(part, final)  # atomic: the final name only ever holds a verified file
    return paths
