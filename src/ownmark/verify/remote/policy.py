"""What an HTTP suspect may cost: :class:`HttpPolicy`, the limits and credentials of a run.

A suspect's server is not trusted, so every timeout, retry count, wait cap and size cap the
HTTP transport (:mod:`ownmark.verify.remote.transport`) applies is one field here, checked
when the policy is made. Kept apart from the transport so the options can be read (and
validated) without the machinery that enforces them.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Final

from ownmark.errors import ConfigError

__all__ = ["HttpPolicy"]

_MIB: Final = 2**20
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


@dataclass(frozen=True)
class HttpPolicy:
    """How an HTTP suspect is queried, and how much a hostile one can cost the verifier.

    A suspect's API is not trusted: it may answer slowly on purpose, without end, or with
    gigabytes. Every limit below turns such behaviour into a failed query (which the verifier
    records as an error, never as a match) instead of a stalled or exhausted verifier.

    Attributes:
        timeout: seconds the server may stay silent: to connect, and between any two pieces of
            the answer (default 10.0). A server that sends one byte every few seconds never
            trips it; ``deadline`` catches that one.
        retries: retries after a transient failure (default 3): connection errors, timeouts,
            HTTP 429, 500, 502, 503 and 504. Other HTTP errors fail at once.
        backoff: seconds to wait before the first retry (default 0.5); the wait doubles on
            every retry and is scaled by a seeded random factor in [0.5, 1] (jitter).
        max_backoff: longest wait between retries, before jitter (default 30.0).
        max_retry_after: longest ``Retry-After`` the client honours (default 30.0); a server
            asking for more fails the query at once instead of stalling it (``Retry-After:
            3600`` would otherwise hold the verification for an hour per request).
        rate_limit: most requests per second (default None: no limit).
        token: bearer token sent as ``Authorization: Bearer <token>`` (default None).
        headers: extra request headers as (name, value) pairs (default none).
        verify_tls: check HTTPS certificates (default True).
        deadline: most seconds one HTTP request may take from connecting to the last byte of
            the answer, however steadily the server trickles it (default 60.0; None: no
            limit). It is enforced at every socket read and write, so a request ends at the
            deadline, not one ``timeout`` later. Each retry gets a fresh deadline. With an
            ``httpx.Client`` of your own (or a proxy from the environment) it is checked only
            between the pieces of the answer.
        total_seconds: the time budget of everything the suspect does, counted from its first
            request: requests, retries, backoff, ``Retry-After`` and rate-limit waits
            (default 600.0; None: no budget). Once spent, every further request fails at once
            with "time budget exhausted"; a wait that would end past it fails right away, and
            a request never runs past it.
        max_response_bytes: the largest answer read, after decompression (default 8 MiB,
            about 30 times the probabilities of 32 images of 1000 classes). A larger answer
            fails the query (not retried) as soon as the limit is passed; the rest is never
            read, so a 1 GB answer costs at most this much memory. Error answers are read
            only up to 64 KiB, for their message.

    Redirects (3xx) are never followed. The evidence names the address that was queried, so
    its answers must come from there: a redirect fails the query with the target named, and a
    redirect to another scheme, host or port says so (following it would hand the key images
    and the token to a server that is not the suspect).

    Raises:
        ConfigError: a value is out of range.
    """

    timeout: float = 10.0
    retries: int = 3
    backoff: float = 0.5
    max_backoff: float = 30.0
    max_retry_after: float = 30.0
    rate_limit: float | None = None
    token: str | None = None
    headers: tuple[tuple[str, str], ...] = ()
    verify_tls: bool = True
    deadline: float | None = 60.0
    total_seconds: float | None = 600.0
    max_response_bytes: int = 8 * _MIB

    def __post_init__(self) -> None:
        _positive("timeout", self.timeout)
        if isinstance(self.retries, bool) or not isinstance(self.retries, int):
            raise ConfigError(f"retries must be a whole number, got {self.retries!r}")
        if self.retries < 0:
            raise ConfigError(f"retries must be 0 or more, got {self.retries}")
        _non_negative("backoff", self.backoff)
        _non_negative("max_backoff", self.max_backoff)
        _non_negative("max_retry_after", self.max_retry_after)
        if self.rate_limit is not None:
            _positive("rate_limit", self.rate_limit)
        if self.deadline is not None:
            _positive("deadline", self.deadline)
        if self.total_seconds is not None:
            _positive("total_seconds", self.total_seconds)
        size = self.max_response_bytes
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ConfigError(f"max_response_bytes must be a positive whole number, got {size!r}")
        if self.token is not None and (not self.token or _has_space(self.token)):
            raise ConfigError(
                "the token must be non-empty without spaces or line breaks; "
                "pass the token alone, without 'Bearer '"
            )
        if not isinstance(self.headers, tuple):
            raise ConfigError("headers must be a tuple of (name, value) pairs")
        for pair in self.headers:
            if not (isinstance(pair, tuple) and len(pair) == 2):
                raise ConfigError(f"header {pair!r} is not a (name, value) pair")
            name, value = pair
            if not isinstance(name, str) or not _HEADER_NAME.fullmatch(name):
                raise ConfigError(f"header name {name!r} is not a valid HTTP header name")
            if not isinstance(value, str) or any(c in value for c in "\r\n\0"):
                raise ConfigError(f"header {name!r} must have a one-line text value")


def _seconds(value: object) -> float | None:
    """``value`` as a finite float, or None when it is not a finite real number."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _positive(name: str, value: object) -> None:
    number = _seconds(value)
    if number is None or number <= 0:
        raise ConfigError(f"{name} must be a positive number, got {value!r}")


def _non_negative(name: str, value: object) -> None:
    number = _seconds(value)
    if number is None or number < 0:
        raise ConfigError(f"{name} must be a number of seconds, 0 or more, got {value!r}")


def _has_space(text: str) -> bool:
    return any(c.isspace() or ord(c) < 32 for c in text)


_DEFAULT_POLICY: Final = HttpPolicy()
