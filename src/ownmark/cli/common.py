"""What every command shares: exit codes, the logger, small argument helpers."""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ownmark.errors import ConfigError

EXIT_OK, EXIT_NOT_OWNED, EXIT_ERROR, EXIT_INCONCLUSIVE = 0, 1, 2, 3
#: ``evidence check``: intact and consistent, but not signed by a pinned key.
EXIT_UNSIGNED = 4
log = logging.getLogger("ownmark")


def _progress(args: argparse.Namespace) -> bool:
    return not args.quiet


#: Commands whose result ``ownmark --json COMMAND`` prints as one JSON object on stdout;
#: ``env``, ``inspect`` and ``key show`` print their own (as with their ``--json``).
JSON_COMMANDS = frozenset(
    {
        "list",
        "data",
        "keygen",
        "preview",
        "train",
        "embed",
        "calibrate",
        "key",
        "verify",
        "evidence",
        "export",
        "attack",
        "matrix",
        "demo",
        "env",
        "inspect",
    }
)


def json_mode(args: argparse.Namespace) -> bool:
    """Whether ``ownmark --json`` asked for the result as JSON on stdout."""
    return bool(getattr(args, "json_stdout", False))


def emit(args: argparse.Namespace, record: dict[str, Any]) -> None:
    """Hand the command's result to ``ownmark --json`` (a no-op without it).

    The command prints its human text as usual; under ``--json`` :func:`ownmark.cli.main`
    sends that text to stderr and prints ``record`` (with the command and its exit code) as
    the only thing on stdout once the command returns.
    """
    if json_mode(args):
        args.json_record = record


def plain(value: Any) -> Any:
    """``value`` as JSON can hold it: paths and enums as text, NaN/inf as null, arrays as lists."""
    import dataclasses
    import enum
    import math

    if isinstance(value, bool) or value is None or isinstance(value, str | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, enum.Enum):
        return plain(value.value)
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [plain(v) for v in value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return plain(dataclasses.asdict(value))
    if hasattr(value, "tolist"):  # numpy arrays and scalars, tensors
        return plain(value.tolist())
    return str(value)


def _load_data(args: argparse.Namespace) -> Any:
    from ownmark.data import load_dataset

    return load_dataset(args.data, args.data_path)


def _parse_params(pairs: Sequence[str]) -> dict[str, str]:
    params: dict[str, str] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise ConfigError(f"parameters look like NAME=VALUE, got {pair!r}")
        params[name.strip().replace("-", "_")] = value
    return params


def _train_config(args: argparse.Namespace, key_ratio: float) -> Any:
    from ownmark.train import TrainConfig

    return TrainConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        momentum=args.momentum,
        seed=args.seed,
        key_ratio=key_ratio,
        augment=args.augment,
        device=args.device,
    )


def _metrics_path(args: argparse.Namespace) -> Path:
    path: Path = args.metrics if args.metrics is not None else args.out.with_suffix(".json")
    return path


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"


#: Arguments that name a file a command writes (folders: ``FOLDER_OUTPUTS``).
FILE_OUTPUTS = ("out", "metrics", "key_out", "onnx", "json", "evidence", "preview", "checkpoint")
#: Commands whose ``--out`` is a folder.
FOLDER_OUTPUTS = ("demo", "matrix")


def preflight(args: argparse.Namespace) -> None:
    """Check what can be checked before any work: output paths and counts.

    A run must not train for minutes and then find it cannot write its result, so every
    output file's place is checked first: not an existing folder, and its folder creatable.
    """
    for name in FILE_OUTPUTS:
        value = getattr(args, name, None)
        if not isinstance(value, Path):
            continue
        option = "--" + name.replace("_", "-")
        if name == "out" and args.command in FOLDER_OUTPUTS:
            if value.exists() and not value.is_dir():
                raise ConfigError(f"--out {value} is a file; give a folder for the outputs")
            continue
        if value.is_dir():
            raise ConfigError(
                f"{option} {value} is a folder; give a file name, e.g. {value / _example(name)}"
            )
        parent = next((p for p in value.absolute().parents if p.exists()), None)
        if parent is None or not parent.is_dir() or not os.access(parent, os.W_OK):
            raise ConfigError(f"{option} {value}: cannot create files in {value.parent}")
    epochs = getattr(args, "epochs", None)
    if args.command in ("train", "embed") and isinstance(epochs, int) and epochs < 1:
        raise ConfigError(f"--epochs must be at least 1, got {epochs} (0 would train nothing)")


def _example(name: str) -> str:
    return {
        "onnx": "model.onnx",
        "json": "result.json",
        "evidence": "evidence.json",
        "preview": "preview.png",
        "metrics": "metrics.json",
        "checkpoint": "run.ckpt",
    }.get(name, "model.safetensors")
