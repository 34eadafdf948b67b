"""``ownmark matrix``'s options (kept out of :mod:`ownmark.cli.parser`, which is long)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ownmark.cli.parser import _add_data, _Parser


def add_matrix(commands: argparse._SubParsersAction[_Parser]) -> None:
    """``ownmark matrix``: schemes x attacks x seeds, resumable, with a table and a heat map."""
    from ownmark.matrix import MatrixConfig

    defaults = MatrixConfig()
    matrix = commands.add_parser(
        "matrix",
        help="robustness matrix: every scheme x attack x seed, with ownmark's verdict",
        description="Train, calibrate and embed one key per scheme and seed, attack each "
        "watermarked model and verify it. Finished cells under --out are not redone.",
    )
    matrix.add_argument("--out", required=True, type=Path, help="folder for models and results")
    matrix.add_argument("--config", type=Path, help="JSON file with MatrixConfig fields")
    matrix.add_argument("--schemes", help="comma-separated scheme names (default: all registered)")
    matrix.add_argument(
        "--attacks",
        help="comma-separated NAME or NAME:k=v;k=v columns; a range makes one column per "
        "value, e.g. prune:rate=0.1..0.9 (default: " + ",".join(defaults.attacks) + ")",
    )
    matrix.add_argument("--seeds", help="comma-separated seeds (default 0)")
    matrix.add_argument("--epochs", type=int, help=f"training epochs (default {defaults.epochs})")
    matrix.add_argument("--num-keys", type=int, help=f"default {defaults.num_keys}")
    matrix.add_argument(
        "--key-ratio", type=float, help=f"key share of each epoch (default {defaults.key_ratio})"
    )
    matrix.add_argument("--arch", help="watermarked model's architecture (default: the paper's)")
    matrix.add_argument("--device", help="torch device (default cpu)")
    matrix.add_argument(
        "--executor",
        choices=("local", "inline", "ray"),
        default="local",
        help="where tasks run: local worker processes (default), inline in this process, "
        "or a Ray cluster (--address; pip install 'ownmark[ray]')",
    )
    matrix.add_argument("--workers", type=int, default=1, help="local worker processes (default 1)")
    matrix.add_argument(
        "--address",
        help="Ray cluster to join: auto, or ray://HOST:10001 (default: start a local Ray runtime)",
    )
    matrix.add_argument(
        "--plugins",
        help="comma-separated modules to import first (in every worker) that register more "
        "schemes or attacks",
    )
    matrix.add_argument(
        "--in-process",
        action="store_true",
        help="verify each cell in process instead of through ownmark's HTTP server "
        "(same answers, faster)",
    )
    _add_data(matrix)
