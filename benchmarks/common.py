"""Helpers the benchmark scripts share: timestamped logging, percentages, cached keys and
models (a rerun picks up what an earlier, interrupted run already made), and the machine
line of a result file."""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import sys
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import torch

from ownmark.keys import KeySet, load_key, save_key
from ownmark.models import Classifier, load_model, save_model
from ownmark.verify import LocalModelSuspect
from ownmark.workflows import run_record

START = time.perf_counter()


def log(message: str) -> None:
    """``message`` on stderr, after the seconds since the script started."""
    print(f"[{time.perf_counter() - START:6.0f} s] {message}", file=sys.stderr, flush=True)


def pct(value: float) -> float:
    """A fraction as a percentage with two decimals."""
    return round(100 * value, 2)


def cached_key(path: Path, make: Callable[..., KeySet]) -> KeySet:
    """The key saved at ``path``, or ``make()`` saved there first."""
    if path.is_file():
        return load_key(path)
    log(f"making {path.name}")
    key = make()
    save_key(key, path)
    return key


def cached_model(path: Path, make: Callable[..., Classifier]) -> Classifier:
    """The model saved at ``path``, or ``make()`` saved there first."""
    if path.is_file():
        return load_model(path)
    log(f"training {path.stem}")
    model = make()
    save_model(model, path)
    return model


def suspect_of(model: Any) -> Any:
    """What verification queries: a model in process, or an attack's suspect as it is."""
    return LocalModelSuspect(model) if isinstance(model, torch.nn.Module) else model


def machine_info(device: str = "cpu") -> str:
    """Where a benchmark ran, for its result file: the GPU if it used one, else the CPU and
    torch's thread count."""
    where = f"{platform.platform()}, {os.cpu_count()} CPU cores"
    if device.startswith("cuda"):
        gpu = torch.cuda.get_device_name(torch.device(device))
        return f"GPU {gpu}; {where}; torch {torch.__version__}"
    return (
        f"CPU only, no GPU; {where} (shared); torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads"
    )


def benchmark_record(
    task: str,
    args: argparse.Namespace,
    started: datetime,
    results: dict[str, Any],
    device: str = "cpu",
    **config: Any,
) -> dict[str, Any]:
    """A result file's record: the command line, start date, wall time, machine, the parsed
    arguments (plus ``config``) and ``results``."""
    return run_record(
        task=task,
        command="python " + shlex.join(sys.argv),
        date=started.isoformat(timespec="seconds"),
        seconds=time.perf_counter() - START,
        machine_info=machine_info(device),
        config={**vars(args), "out_dir": str(args.out_dir), **config},
        results=results,
    )
