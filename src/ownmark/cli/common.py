"""What every command shares: exit codes, the logger, small argument helpers."""

from __future__ import annotations

import argparse
import logging
import math
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
            raise ConfigError(f"scheme parameters look like NAME=VALUE, got {pair!r}")
        params[name.strip().replace("-", "_")] = value
    return params


def parse_rates(text: str) -> list[float]:
    """``0.5`` → [0.5]; ``0.1,0.5`` → [0.1, 0.5]; ``0.1..0.9`` → 0.1, 0.2, …, 0.9."""
    try:
        if ".." in text:
            lo_text, hi_text = text.split("..")
            lo, hi = float(lo_text), float(hi_text)
            if hi < lo:
                raise ConfigError(f"--rate sweep {text!r} runs backwards; write LOW..HIGH")
            steps = math.floor((hi - lo) / 0.1 + 1e-9)
            rates = [round(lo + 0.1 * i, 10) for i in range(steps + 1)]
        else:
            rates = [float(v) for v in text.split(",")]
    except ValueError:
        raise ConfigError(f"--rate takes 0.5, 0.1,0.5 or 0.1..0.9, got {text!r}") from None
    if not rates or any(not 0 <= r <= 1 for r in rates):
        raise ConfigError(f"pruning rates must lie in 0..1, got {text!r}")
    return rates


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
