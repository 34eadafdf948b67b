"""Save and load :class:`~ownmark.models.registry.Classifier` models as safetensors files.

A model file is a plain safetensors file: the network's state dict plus string metadata that
describes how to rebuild it (``format: ownmark-model``, ``format_version``, ``arch``,
``num_classes``, ``in_channels``, ``input_size``, ``mean``, ``std``, ``ownmark_version``) and any
extra string keys the caller adds (e.g. training metrics).

Loading never unpickles anything. The only code a model file can make us run is a user's
``package.module:factory`` architecture, and that is refused unless the caller names that exact
factory in ``allow_factory`` (the CLI's ``--allow-factory``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

import safetensors
import safetensors.torch
import torch

from ownmark import __version__
from ownmark.errors import ConfigError, ModelFileError
from ownmark.fileio import atomic_path
from ownmark.models.registry import Classifier, ModelSpec, build_model, is_factory_name

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "load_model",
    "load_state_into",
    "read_model_metadata",
    "save_model",
    "spec_from_metadata",
    "spec_to_metadata",
]

FORMAT = "ownmark-model"
"""Value of the ``format`` metadata key that marks an ownmark model file."""
FORMAT_VERSION = "1"
"""Current model file format version (``format_version`` metadata key)."""

_RESERVED_KEYS = frozenset(
    {
        "format",
        "format_version",
        "arch",
        "num_classes",
        "in_channels",
        "input_size",
        "mean",
        "std",
        "ownmark_version",
    }
)


def _one_line(text: str) -> str:
    return " ".join(text.split())


def spec_to_metadata(spec: ModelSpec) -> dict[str, str]:
    """The reserved metadata keys describing ``spec`` (all values are strings)."""
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "arch": spec.arch,
        "num_classes": str(spec.num_classes),
        "in_channels": str(spec.in_channels),
        "input_size": json.dumps(list(spec.input_size)),
        "mean": json.dumps(list(spec.mean)),
        "std": json.dumps(list(spec.std)),
        "ownmark_version": __version__,
    }


def spec_from_metadata(metadata: Mapping[str, str], source: str = "model file") -> ModelSpec:
    """Rebuild the :class:`ModelSpec` stored in ``metadata``.

    Raises:
        ModelFileError: a key is missing or malformed (``source`` names the file in the message).
    """
    try:
        return ModelSpec(
            arch=metadata["arch"],
            num_classes=int(metadata["num_classes"]),
            in_channels=int(metadata["in_channels"]),
            input_size=tuple(json.loads(metadata["input_size"])),
            mean=tuple(json.loads(metadata["mean"])),
            std=tuple(json.loads(metadata["std"])),
        )
    except KeyError as exc:
        raise ModelFileError(
            f"{source}: model metadata lacks the key {exc.args[0]!r}; the file is damaged "
            "or was not written by 'ownmark'"
        ) from exc
    except (ValueError, TypeError, ConfigError) as exc:
        raise ModelFileError(
            f"{source}: invalid model metadata ({_one_line(str(exc))}); the file is damaged"
        ) from exc


def save_model(
    model: Classifier,
    path: str | os.PathLike[str],
    metadata: Mapping[str, str] | None = None,
) -> None:
    """Write ``model`` to ``path`` as a safetensors file, atomically.

    The file appears complete under ``path`` or not at all (no half-written files or temp
    files are left behind on error).

    Args:
        model: the classifier to save (its ``spec`` goes into the metadata).
        path: destination file; parent folders are created.
        metadata: extra string keys to store (e.g. ``{"test_accuracy": "0.991"}``); default none.

    Raises:
        TypeError: ``model`` is not a Classifier, or a metadata key/value is not a ``str``.
        ValueError: ``metadata`` uses a reserved key (``format``, ``arch``, ...).
    """
    if not isinstance(model, Classifier):
        raise TypeError(f"save_model expects a Classifier, got {type(model).__name__}")
    extra = dict(metadata or {})
    for key, value in extra.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise TypeError(
                f"model metadata must map str to str, got {key!r}: {type(value).__name__}"
            )
    clashes = sorted(_RESERVED_KEYS.intersection(extra))
    if clashes:
        raise ValueError(f"model metadata keys {clashes} are reserved by ownmark")
    full_metadata = {**extra, **spec_to_metadata(model.spec)}
    # safetensors needs contiguous CPU tensors that do not share memory.
    tensors = {
        name: tensor.detach().to("cpu").contiguous().clone()
        for name, tensor in model.state_dict().items()
    }
    with atomic_path(path) as tmp:
        safetensors.torch.save_file(tensors, str(tmp), metadata=full_metadata)


def _check_file(path: Path) -> None:
    if not path.exists():
        raise ModelFileError(
            f"model file not found: {path}; train one with 'ownmark train' or check the path"
        )
    if not path.is_file():
        raise ModelFileError(f"model path {path} is not a file")


def _read_raw_metadata(path: Path) -> dict[str, str] | None:
    """The safetensors header metadata (None if the file has none); ModelFileError if unreadable."""
    _check_file(path)
    try:
        with safetensors.safe_open(str(path), framework="pt") as handle:
            raw: dict[str, str] | None = handle.metadata()
    except Exception as exc:  # SafetensorError, OSError, ... — anything means "not readable"
        raise ModelFileError(
            f"{path} is not a valid model file (corrupt or not safetensors: {_one_line(str(exc))})"
        ) from exc
    return raw


def read_model_metadata(path: str | os.PathLike[str]) -> dict[str, str]:
    """All metadata of the ownmark model file ``path`` (without loading weights or running code).

    Raises:
        ModelFileError: missing file, not a safetensors file, not an ownmark model, or an
            unsupported format version.
    """
    file = Path(path)
    metadata = _read_raw_metadata(file)
    if not metadata or metadata.get("format") != FORMAT:
        raise ModelFileError(
            f"{file} is a safetensors file but not an ownmark model (no 'format: {FORMAT}' "
            "metadata); save models with 'ownmark train' or ownmark.models.save_model"
        )
    version = metadata.get("format_version")
    if version != FORMAT_VERSION:
        raise ModelFileError(
            f"{file} uses model format version {version!r}, but this ownmark "
            f"({__version__}) reads version {FORMAT_VERSION!r}; upgrade ownmark"
        )
    return dict(metadata)


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        tensors: dict[str, torch.Tensor] = safetensors.torch.load_file(str(path), device="cpu")
    except Exception as exc:  # corrupt data section
        raise ModelFileError(
            f"cannot read the weights in {path} ({_one_line(str(exc))}); the file is damaged"
        ) from exc
    return tensors


def _apply_state(model: Classifier, state: dict[str, torch.Tensor], path: Path) -> None:
    """Load ``state`` into ``model`` strictly, turning any mismatch into one ModelFileError line."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong_shape = sorted(
        f"{name} {tuple(state[name].shape)} != {tuple(expected[name].shape)}"
        for name in set(expected) & set(state)
        if state[name].shape != expected[name].shape
    )
    problems: list[str] = []
    for label, items in (("missing", missing), ("unexpected", unexpected), ("shape", wrong_shape)):
        if items:
            shown = ", ".join(items[:3]) + (
                f", ... ({len(items)} in all)" if len(items) > 3 else ""
            )
            problems.append(f"{label}: {shown}")
    if problems:
        raise ModelFileError(
            f"the weights in {path} do not match architecture {model.spec.arch!r} "
            f"({'; '.join(problems)}); the file is damaged or its metadata was edited"
        )
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:  # e.g. dtype that cannot be copied
        raise ModelFileError(f"cannot load the weights in {path}: {_one_line(str(exc))}") from exc


def load_model(path: str | os.PathLike[str], allow_factory: str | None = None) -> Classifier:
    """Load an ownmark model file written by :func:`save_model`.

    Args:
        path: the ``.safetensors`` model file.
        allow_factory: for a model whose ``arch`` is a user factory (``package.module:factory``),
            loading imports and runs that code; it is allowed only if ``allow_factory`` equals
            that exact string. Default ``None``: only built-in architectures load.

    Returns:
        The classifier in eval mode, on the CPU.

    Raises:
        ModelFileError: missing/corrupt/non-ownmark file, refused or failing user factory,
            or weights that do not match the architecture.
    """
    file = Path(path)
    spec = spec_from_metadata(read_model_metadata(file), source=str(file))
    if is_factory_name(spec.arch) and allow_factory != spec.arch:
        raise ModelFileError(
            f"{file} uses custom model code {spec.arch!r}; loading it imports and runs that "
            f"code, so it is refused by default. If you trust it, pass "
            f"--allow-factory {spec.arch}"
        )
    try:
        model = build_model(spec)
    except ConfigError as exc:
        raise ModelFileError(f"cannot rebuild the model in {file}: {exc}") from exc
    _apply_state(model, _read_tensors(file), file)
    return model.to("cpu").eval()


def load_state_into(model: Classifier, path: str | os.PathLike[str]) -> None:
    """Load the weights of model file ``path`` into the existing ``model`` (in place).

    The file's architecture and dimensions must match ``model.spec`` (normalisation may differ:
    it lives in the spec, not in the weights). Runs no code from the file.

    Raises:
        ModelFileError: unreadable file, different architecture, or mismatching weights.
    """
    file = Path(path)
    spec = spec_from_metadata(read_model_metadata(file), source=str(file))
    mine = model.spec
    if (spec.arch, spec.num_classes, spec.in_channels) != (
        mine.arch,
        mine.num_classes,
        mine.in_channels,
    ):
        raise ModelFileError(
            f"{file} holds a {spec.arch} model ({spec.num_classes} classes, {spec.in_channels} "
            f"channels), not {mine.arch} ({mine.num_classes} classes, {mine.in_channels} channels)"
        )
    _apply_state(model, _read_tensors(file), file)
