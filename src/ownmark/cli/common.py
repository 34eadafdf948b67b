"""What every command shares: exit codes, the logger, small argument helpers."""

from __future__ import annotations

import argparse
import logging
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
