"""Numbered step lines for long commands, and the list of files they wrote.

Progress bars only draw on a terminal; a run whose output goes to a log file must still say
what it is doing. :class:`Steps` prints ``[3/9] training reference lenet5, seed 10`` lines
through a ``report`` callable (the CLI prints them on stderr unless ``-q``) and collects
the files a run wrote, with a line saying what each one is, for the run's index.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from ownmark.fileio import write_text_atomic

Report = Callable[[str], None]


def silent(line: str) -> None:
    """A ``report`` that says nothing (the library's default)."""


class Steps:
    """Counts the steps of a run and remembers its files.

    Args:
        total: how many steps the run has.
        report: receives each step line (default: nothing).
    """

    def __init__(self, total: int, report: Report = silent) -> None:
        self.total = total
        self.report = report
        self.done = 0
        self.started = time.perf_counter()
        self.files: dict[Path, str] = {}

    def step(self, text: str) -> None:
        """Announce the next step: ``[k/total] text (elapsed)``."""
        self.done += 1
        elapsed = time.perf_counter() - self.started
        self.report(f"[{self.done}/{self.total}] {text} ({elapsed:.0f} s so far)")

    def wrote(self, path: Path, what: str) -> Path:
        """Record that the run wrote ``path`` (what it holds, for the index)."""
        self.files[Path(path)] = what
        return Path(path)

    def write_index(self, folder: Path, title: str, intro: str) -> Path:
        """Write ``folder/README.md``: the title, an introduction and every file with its role."""
        lines = [f"# {title}", "", intro, "", "| file | what it is |", "| --- | --- |"]
        for path, what in sorted(self.files.items()):
            try:
                shown = path.relative_to(folder)
            except ValueError:
                shown = path
            lines.append(f"| `{shown}` | {what} |")
        index = folder / "README.md"
        write_text_atomic(index, "\n".join(lines) + "\n")
        self.files[index] = "this index"
        return index
