"""The ``ownmark`` command line: parses arguments, calls the library, prints results.

Thin by design: every command is a library call a user can make from Python. The parser is
in :mod:`ownmark.cli.parser`; the commands are grouped by what they act on (keys, models,
verification).

Exit codes: 0 success / owned, 1 not owned, 2 bad input or usage, 3 inconclusive;
``evidence check``: 0 intact and signed by the pinned key, 1 invalid, 4 intact but unsigned.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from ownmark.cli.common import EXIT_ERROR, JSON_COMMANDS, json_mode, plain, preflight
from ownmark.cli.info import cmd_completion, cmd_env, cmd_inspect
from ownmark.cli.keys import cmd_calibrate, cmd_key, cmd_keygen, cmd_preview
from ownmark.cli.models import (
    cmd_attack,
    cmd_data,
    cmd_demo,
    cmd_export,
    cmd_list,
    cmd_matrix,
    cmd_serve,
    cmd_train,
)
from ownmark.cli.parser import build_parser
from ownmark.cli.verify import cmd_evidence, cmd_trace, cmd_verify
from ownmark.errors import ConfigError, OwnmarkError
from ownmark.registry import parse_sweep

__all__ = ["COMMANDS", "build_parser", "main", "parse_sweep"]

COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "list": cmd_list,
    "data": cmd_data,
    "keygen": cmd_keygen,
    "preview": cmd_preview,
    "train": cmd_train,
    "embed": cmd_train,
    "calibrate": cmd_calibrate,
    "key": cmd_key,
    "verify": cmd_verify,
    "trace": cmd_trace,
    "evidence": cmd_evidence,
    "serve": cmd_serve,
    "export": cmd_export,
    "attack": cmd_attack,
    "matrix": cmd_matrix,
    "demo": cmd_demo,
    "env": cmd_env,
    "inspect": cmd_inspect,
    "completion": cmd_completion,
}


def _autocomplete(parser: argparse.ArgumentParser) -> None:
    """Answer a shell's completion request (see ``ownmark completion``) and exit, if it is one.

    argcomplete (``pip install 'ownmark[completion]'``) marks those requests with the
    ``_ARGCOMPLETE`` environment variable; checking it first keeps ordinary runs from
    importing argcomplete at all.
    """
    if "_ARGCOMPLETE" not in os.environ:
        return
    try:
        import argcomplete
    except ImportError:  # completion was registered, then argcomplete uninstalled: none
        return
    argcomplete.autocomplete(parser)


#: Each command's sub-command argument, for the ``command`` field of ``--json`` output.
_SUBCOMMANDS = {
    "attack": "attack",
    "data": "data_command",
    "key": "key_command",
    "evidence": "evidence_command",
}


def _run_json(args: argparse.Namespace) -> int:
    """Run the command for ``ownmark --json``: its result as one JSON object on stdout.

    The object is the command's record (see :func:`ownmark.cli.common.emit`) with
    ``command`` (e.g. ``"attack prune"``) and ``exit_code``; the human text goes to stderr.
    ``env``, ``inspect`` and ``key show`` print their own JSON (as with their ``--json``).
    """
    if args.command not in JSON_COMMANDS:
        raise ConfigError(
            f"'{args.command}' reports no result to print as JSON; drop --json "
            f"(it works with: {', '.join(sorted(JSON_COMMANDS))})"
        )
    if args.command in ("env", "inspect") or (args.command == "key" and args.key_command == "show"):
        args.json = True
        return COMMANDS[args.command](args)
    stdout = sys.stdout
    with contextlib.redirect_stdout(sys.stderr):
        code = COMMANDS[args.command](args)
    sub = getattr(args, _SUBCOMMANDS.get(args.command, ""), None)
    record: dict[str, Any] = getattr(args, "json_record", None) or {}
    document = {
        "command": f"{args.command} {sub}" if isinstance(sub, str) else args.command,
        **plain(record),
        "exit_code": code,
    }
    print(json.dumps(document, indent=2, allow_nan=False), file=stdout, flush=True)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``ownmark`` command; returns the exit code."""
    parser = build_parser()
    _autocomplete(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="ownmark: %(message)s")
    try:
        preflight(args)
        if json_mode(args):
            return _run_json(args)
        return COMMANDS[args.command](args)
    except OwnmarkError as exc:
        print(f"ownmark: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except OSError as exc:
        # File system problems with outputs (a folder where a file should go, no permission).
        where = f": {exc.filename}" if exc.filename else ""
        print(f"ownmark: error: {exc.strerror or exc}{where}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("ownmark: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if os.environ.get("OWNMARK_DEBUG"):
            raise
        print(
            f"ownmark: error: unexpected {type(exc).__name__}: {exc} "
            "(set OWNMARK_DEBUG=1 for the traceback and please report it)",
            file=sys.stderr,
        )
        return EXIT_ERROR
