"""Image folders: one sub-folder per class (GTSRB's layout, and the usual one for own data)."""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch
from PIL import Image

from ownmark.data.base import DataSplits, ImageDataset, mebibytes, stratified_split
from ownmark.errors import ConfigError, DataError

#: File name endings read as images (compared in lower case); other files are ignored.
IMAGE_EXTENSIONS = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".pgm", ".gif", ".tif", ".tiff"}
)

#: PIL modes that carry no colour.
_GRAY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"})

_HOW_TO = "expected one sub-folder per class holding the images, optionally inside train/ and test/"

# Caps on an image folder, which may come from anywhere: a decompression bomb (a small PNG that
# claims a huge size), a huge file or a huge folder must end in a one-line error. For scale,
# GTSRB holds 51,839 images of at most 250x250 pixels (~190 KB each as PPM).

#: Most entries (class folders and files) looked at: 9.6x GTSRB, 4.5x Tiny ImageNet's 110,000.
FOLDER_MAX_FILES = 500_000
#: Largest image, in pixels (8192x8192, 64 megapixels): full-size photos from 48-61 MP cameras
#: pass, to be resized; checked from the header, before anything is decoded. Pillow's own
#: guard (``Image.MAX_IMAGE_PIXELS``, 89 MP warned, 179 MP refused) sits above it.
FOLDER_MAX_IMAGE_PIXELS = 8192 * 8192
#: Largest image file: an uncompressed 8-bit RGB image at the pixel cap (BMP, PPM, TIFF) is
#: 192 MiB; compressed formats are far smaller.
FOLDER_MAX_IMAGE_BYTES = 256 << 20
#: Largest decoded data set, ``N x C x H x W`` bytes, checked before decoding: 26x GTSRB at
#: 32x32 (157 MiB), 3x Tiny ImageNet at 64x64 (1.3 GiB).
FOLDER_MAX_TOTAL_BYTES = 4 << 30


def _normalize_size(image_size: int | tuple[int, int] | None) -> tuple[int, int] | None:
    """``image_size`` as ``(height, width)``, or None."""
    if image_size is None:
        return None
    if isinstance(image_size, int):
        size = (image_size, image_size)
    else:
        size = (int(image_size[0]), int(image_size[1]))
    if min(size) < 1:
        raise ConfigError(f"image_size must be positive, got {image_size!r}")
    return size


class _Counter:
    """Entries looked at so far, against :data:`FOLDER_MAX_FILES`."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.count = 0

    def tick(self) -> None:
        self.count += 1
        if self.count > FOLDER_MAX_FILES:
            raise DataError(
                f"image folder refused: {self.root} holds more than {FOLDER_MAX_FILES:,} files "
                "and folders, more than this loader takes (GTSRB has 51,839 images); pass a "
                "folder holding only the data set, or a subset of it"
            )


def _class_folders(root: Path, counter: _Counter) -> list[Path]:
    folders: list[Path] = []
    try:
        for p in root.iterdir():
            counter.tick()
            if p.is_dir() and not p.name.startswith("."):
                folders.append(p)
    except OSError as exc:
        raise DataError(f"cannot read image folder {root}: {exc}") from exc
    if not folders:
        raise DataError(f"no class sub-folders in {root}; {_HOW_TO}")
    return sorted(folders)


def _image_files(folder: Path, counter: _Counter) -> list[Path]:
    files: list[Path] = []
    try:
        for p in folder.iterdir():
            counter.tick()
            if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".") and p.is_file():
                files.append(p)
    except OSError as exc:
        raise DataError(f"cannot read image folder {folder}: {exc}") from exc
    # Sorted so the row order, and so every seeded split, is the same on every machine.
    return sorted(files)


def _scan(root: Path, counter: _Counter) -> tuple[tuple[str, ...], list[tuple[Path, int]]]:
    """Class names and ``(file, label)`` pairs under ``root``."""
    folders = _class_folders(root, counter)
    items = [
        (file, label)
        for label, folder in enumerate(folders)
        for file in _image_files(folder, counter)
    ]
    if not items:
        raise DataError(
            f"no images ({', '.join(sorted(IMAGE_EXTENSIONS))}) in the class folders of {root}"
        )
    return tuple(f.name for f in folders), items


@contextmanager
def _open_image(file: Path) -> Iterator[Image.Image]:
    """The image in ``file``, opened lazily once its file size and pixel count pass the caps.

    Errors inside the ``with`` block (a damaged image fails only when decoded) become
    one-line :class:`DataError` messages too.
    """
    try:
        with file.open("rb") as stream:
            size = os.fstat(stream.fileno()).st_size
            if size > FOLDER_MAX_IMAGE_BYTES:
                raise DataError(
                    f"image refused: {file} is {mebibytes(size)}, more than the "
                    f"{mebibytes(FOLDER_MAX_IMAGE_BYTES)} cap on one image file; shrink it or "
                    "move it out of the data folder"
                )
            with warnings.catch_warnings():
                # Pillow warns from 89 MP on; the cap below is lower and says what to do.
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                img = Image.open(stream)
            with img:
                pixels = img.width * img.height
                if pixels > FOLDER_MAX_IMAGE_PIXELS:
                    raise _too_many_pixels(file, f"{img.width}x{img.height}")
                yield img
    except Image.DecompressionBombError as exc:
        raise _too_many_pixels(file, "larger than Pillow's own limit") from exc
    except (OSError, ValueError, SyntaxError) as exc:
        raise DataError(f"cannot read image {file}: {exc}") from exc


def _too_many_pixels(file: Path, size: str) -> DataError:
    return DataError(
        f"image refused: {file} claims {size} pixels, more than the "
        f"{FOLDER_MAX_IMAGE_PIXELS:,}-pixel cap (8192x8192), so it could be a decompression "
        "bomb; shrink the image or move it out of the data folder"
    )


def _header(file: Path) -> tuple[str, tuple[int, int]]:
    """Mode and ``(height, width)`` of an image, reading only its header."""
    with _open_image(file) as img:
        return img.mode, (img.height, img.width)


def _decode(
    items: list[tuple[Path, int]], mode: str, size: tuple[int, int] | None, channels: int
) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.int64]]:
    images: list[npt.NDArray[np.uint8]] = []
    for file, _ in items:
        with _open_image(file) as img:
            # Palette and alpha images must be converted before resizing, so convert first.
            converted = img.convert(mode)
            if size is not None and (converted.height, converted.width) != size:
                converted = converted.resize((size[1], size[0]), Image.Resampling.BILINEAR)
            pixels = np.asarray(converted, dtype=np.uint8)
        images.append(pixels.reshape(pixels.shape[0], pixels.shape[1], channels))
    stacked = np.stack(images).transpose(0, 3, 1, 2)
    labels = np.array([label for _, label in items], dtype=np.int64)
    return np.ascontiguousarray(stacked), labels


def _dataset(
    items: list[tuple[Path, int]],
    mode: str,
    size: tuple[int, int] | None,
    channels: int,
    classes: tuple[str, ...],
    name: str,
) -> ImageDataset:
    images, labels = _decode(items, mode, size, channels)
    return ImageDataset(
        images=torch.from_numpy(images),
        labels=torch.from_numpy(labels),
        classes=classes,
        name=name,
    )


def load_image_folder(
    root: str | os.PathLike[str],
    image_size: int | tuple[int, int] | None = None,
    channels: int | None = None,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> DataSplits:
    """Load images stored as ``root/<class>/<image>`` (class names = sorted folder names).

    If ``root`` has both ``train/`` and ``test/`` sub-folders, each is such a class folder tree
    and they are the two splits (their class lists must agree). Otherwise the images are split
    per class with :func:`~ownmark.data.base.stratified_split`.

    Args:
        root: the folder.
        image_size: resize every image to this size, an ``int`` (square) or ``(height, width)``.
            Default None: keep the size, which must then be the same for every image.
        channels: 1 (grayscale, "L") or 3 (colour, "RGB"). Default None: 1 if every image is
            grayscale, else 3.
        test_fraction: share of each class held out for testing when there is no
            ``train/``/``test/`` split (default 0.2).
        seed: seed of that split (default 0).

    Raises:
        ConfigError: invalid ``image_size``, ``channels`` or ``test_fraction``.
        DataError: missing folder, no classes or images, unreadable image, differing class lists,
            differing image sizes without ``image_size``, or one of the ``FOLDER_MAX_*`` caps
            passed (files in the folder, bytes or pixels of one image, decoded total).
    """
    folder = Path(root)
    size = _normalize_size(image_size)
    if channels not in (None, 1, 3):
        raise ConfigError(f"channels must be 1 or 3, got {channels!r}")
    if not 0.0 < test_fraction < 1.0:
        raise ConfigError(f"test_fraction must be between 0 and 1, got {test_fraction!r}")
    if not folder.is_dir():
        raise DataError(f"image folder not found: {folder}; {_HOW_TO}")

    presplit = (folder / "train").is_dir() and (folder / "test").is_dir()
    counter = _Counter(folder)
    if presplit:
        classes, train_items = _scan(folder / "train", counter)
        test_classes, test_items = _scan(folder / "test", counter)
        if test_classes != classes:
            only_train = sorted(set(classes) - set(test_classes))
            only_test = sorted(set(test_classes) - set(classes))
            raise DataError(
                f"class folders of {folder / 'train'} and {folder / 'test'} differ: only in "
                f"train: {only_train or 'none'}, only in test: {only_test or 'none'}"
            )
        all_items = train_items + test_items
    else:
        classes, all_items = _scan(folder, counter)

    headers = [(file, *_header(file)) for file, _ in all_items]
    if channels is None:
        channels = 1 if all(mode in _GRAY_MODES for _, mode, _ in headers) else 3
    if size is None:
        first_file, _, first_size = headers[0]
        for file, _, file_size in headers:
            if file_size != first_size:
                raise DataError(
                    f"images in {folder} have different sizes ({first_file} is "
                    f"{first_size[0]}x{first_size[1]}, {file} is {file_size[0]}x{file_size[1]}); "
                    "pass an image size (image_size=32, or --image-size 32) to resize them all"
                )
    height, width = size if size is not None else headers[0][2]
    total = len(all_items) * channels * height * width
    if total > FOLDER_MAX_TOTAL_BYTES:
        raise DataError(
            f"image folder refused: {len(all_items):,} images of {channels}x{height}x{width} "
            f"in {folder} would take {mebibytes(total)} in memory, more than the "
            f"{mebibytes(FOLDER_MAX_TOTAL_BYTES)} cap; pass a smaller image size "
            "(image_size=32, or --image-size 32) or use fewer images"
        )
    mode = "L" if channels == 1 else "RGB"
    name = f"folder:{folder.name}"

    if presplit:
        return DataSplits(
            train=_dataset(train_items, mode, size, channels, classes, f"{name}/train"),
            test=_dataset(test_items, mode, size, channels, classes, f"{name}/test"),
        )
    data = _dataset(all_items, mode, size, channels, classes, name)
    train_rows, test_rows = stratified_split(data.labels.numpy(), test_fraction, seed)
    return DataSplits(
        train=data.subset(train_rows.tolist(), f"{name}/train"),
        test=data.subset(test_rows.tolist(), f"{name}/test"),
    )
