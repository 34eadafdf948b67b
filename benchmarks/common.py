"""Helpers the benchmark scripts share: timestamped logging, percentages, cached keys and
models (a rerun picks up what an earlier, interrupted run already made), and the machine
line of a result file."""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import torch

from ownmark.data import DataSplits
from ownmark.keys import KeySet, load_key, save_key
from ownmark.models import Classifier, load_model, save_model
from ownmark.schemes import scheme_for_key
from ownmark.verify import LocalModelSuspect
from ownmark.workflows import prune_sweep, run_record

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


def fresh_key(key: KeySet, data: DataSplits, count: int = 1000, seed: int = 1) -> KeySet:
    """``key`` with ``count`` fresh trigger images (test images no model trained on) in place
    of its own: what attacks and robustness rows are judged on."""
    images, labels = scheme_for_key(key).fresh_triggers(
        key, data, count, torch.Generator().manual_seed(seed)
    )
    return dataclasses.replace(key, images=images, labels=labels, originals=images)


def pruning_rows(
    model: Classifier, rates: Sequence[float], data: DataSplits, key: KeySet
) -> list[dict[str, float]]:
    """Test and watermark accuracy (%) after pruning ``model`` at each rate."""
    pruned = prune_sweep(model, list(rates), test=data.test, key=key)
    return [
        {"rate": r, "test": pct(row["test_accuracy"]), "wm": pct(row["watermark_accuracy"])}
        for r, row in zip(rates, pruned, strict=True)
    ]


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
