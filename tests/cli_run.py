"""Run the ``ownmark`` command in-process, as the console script would, for CLI tests."""

from __future__ import annotations

import traceback
from collections.abc import Sequence

import pytest

from ownmark.cli import main


def run_cli(argv: Sequence[object], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """Run ``ownmark ARGV`` in-process like the console script: (exit code, stdout, stderr).

    argparse errors leave through SystemExit; an uncaught exception is turned into exit code 1
    and a traceback on stderr, which is what the real console script would show.
    """
    capsys.readouterr()  # drop anything printed before
    tb = ""
    try:
        rc = main([str(a) for a in argv])
    except SystemExit as exc:
        rc = exc.code if isinstance(exc.code, int) else 1
    except Exception:
        rc, tb = 1, traceback.format_exc()
    out, err = capsys.readouterr()
    return rc, out, err + tb
