"""Thread control for the small networks some schemes train and run at keygen."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def single_thread() -> Iterator[None]:
    """Run torch on one CPU thread inside the block (restored after).

    The networks are tiny: more threads gain little and, on a busy machine, cost up to ten
    times the time (measured). One thread also fixes the order of the float sums, so the
    same key makes the same uint8 images on machines with other core counts.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
