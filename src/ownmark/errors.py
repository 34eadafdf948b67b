"""Errors that the CLI turns into one line on stderr and exit code 2.

Every message says what is wrong and what to do about it; callers never need a traceback.
"""

from __future__ import annotations


def one_line(exc: BaseException, limit: int = 300) -> str:
    """``Type: message`` squeezed onto one short line (CLI errors are one line)."""
    text = " ".join(str(exc).split())
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class OwnmarkError(Exception):
    """Base class for every error ownmark raises on bad input."""


class DataError(OwnmarkError):
    """A data set is missing, corrupt or in an unexpected format."""


class KeyFileError(OwnmarkError):
    """A key file is missing, corrupt, or was edited after it was created."""


class ModelFileError(OwnmarkError):
    """A model file is missing, corrupt, or does not match what was asked."""


class ConfigError(OwnmarkError):
    """An argument or parameter is invalid (unknown name, out-of-range value, mismatch)."""


class EvidenceError(OwnmarkError):
    """An evidence file is missing, unreadable, or a signing key is unusable."""
