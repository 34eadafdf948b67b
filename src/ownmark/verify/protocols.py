"""How the verifier talks to a remote suspect: wire protocols, retries, answer validation.

Three ways to reach a suspect, all implementing :class:`~ownmark.verify.suspects.Suspect`:

* :class:`V2Suspect`: the Open Inference Protocol (KServe v2), spoken by ``ownmark serve``,
  Triton, KServe and MLServer.
* :class:`TemplateSuspect`: any other JSON API, described by a small template that says where
  the images go in the request and where the answers are in the response.
* :class:`CallableSuspect`: a Python function (see :func:`load_adapter`), for APIs that need
  custom code (signing, uploads, odd encodings).

The HTTP suspects share one transport that retries transient failures (connection errors,
timeouts, 429 and 5xx) with seeded, jittered exponential backoff, honours ``Retry-After`` and
spaces requests to a rate limit. The suspect's server is not trusted, so the transport also
bounds what it can cost (:class:`HttpPolicy`): a deadline per request however slowly the
answer trickles in, a time budget for the whole run, a cap on ``Retry-After``, a cap on the
bytes read from an answer, and no redirects.

Every answer is validated here: a suspect returns exactly one answer per image, an integer
label or an :class:`~ownmark.verify.suspects.InvalidAnswer` where the image's scores name no
class (tied for the top, NaN, infinite), or raises :class:`QueryError` with a one-line cause.
The verifier records both as failed queries and never counts them as matches, so garbage in
an answer can only make a verification inconclusive, never "owned".
"""

from __future__ import annotations

import base64
import contextlib
import email.utils
import hashlib
import importlib
import importlib.util
import inspect
import io
import json
import math
import os
import random
import re
import ssl
import sys
import time
import uuid
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from types import TracebackType
from typing import Any, Final, TypeVar
from urllib.parse import quote, unquote, urljoin, urlsplit

import httpcore
import httpx
import numpy as np
import numpy.typing as npt
import torch

from ownmark import __version__
from ownmark.errors import ConfigError, OwnmarkError
from ownmark.verify.suspects import InvalidAnswer, Suspect, labels_from_scores

__all__ = [
    "ANSWER_KINDS",
    "ENCODINGS",
    "PROTOCOLS",
    "Adapter",
    "Answer",
    "CallableSuspect",
    "HttpPolicy",
    "QueryError",
    "TemplateSuspect",
    "V2Suspect",
    "load_adapter",
    "normalize_answers",
    "open_suspect",
    "parse_v2_response",
]

#: Which output of a v2 answer holds the prediction (see :func:`parse_v2_response`).
ANSWER_KINDS: Final = ("auto", "label", "topk", "probabilities")
#: How a :class:`TemplateSuspect` puts the image batch into the request body.
ENCODINGS: Final = ("nested", "flat", "png_base64")
#: The protocols :func:`open_suspect` knows.
PROTOCOLS: Final = ("v2", "template", "python")

#: A user's Python suspect: uint8 images (N×C×H×W numpy array) in, one answer per image out.
Adapter = Callable[[npt.NDArray[np.uint8]], object]

_MESSAGE_CHARS = 200  # server text quoted in an error message is cut to this length
_INT_TYPES = frozenset({"INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64"})
_FLOAT_TYPES = frozenset({"FP16", "BF16", "FP32", "FP64"})
_LABEL_NAMES = frozenset({"label", "labels"})
_RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_INTEGER_TEXT = re.compile(r"[+-]?[0-9]+")


class QueryError(OwnmarkError):
    """A query that failed for good (after any retries); the message names the cause."""


def _one_line(text: object, limit: int = _MESSAGE_CHARS) -> str:
    """``text`` as one line of at most ``limit`` characters, safe to put in a message."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


# ---------------------------------------------------------------------------------------------
# HTTP policy and transport

_MIB: Final = 2**20
#: How much of an error answer (4xx, 5xx) is read: enough for its message, never more.
_ERROR_BODY_BYTES: Final = 64 * 1024
#: Slack when telling "the deadline cut the request" from "the server went quiet".
_DEADLINE_SLACK_S: Final = 0.05
#: Request bodies are written in parts, so that the deadline is checked between them.
_WRITE_PART_BYTES: Final = 64 * 1024


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


def _size(n: int) -> str:
    """A byte count for messages: "8 MiB", "64 KiB", "100 bytes"."""
    if n >= _MIB and n % _MIB == 0:
        return f"{n // _MIB} MiB"
    if n >= 1024 and n % 1024 == 0:
        return f"{n // 1024} KiB"
    return f"{n} bytes"


_DEFAULT_POLICY: Final = HttpPolicy()

Sleep = Callable[[float], None]
Clock = Callable[[], float]


# --- the deadline, enforced at the socket ----------------------------------------------------


class _Deadline:
    """The running request's deadline on ``time.monotonic()``, shared with its sockets.

    httpx has timeouts per read but no deadline per request: a server that sends one byte
    every few seconds, in its headers or its body, would hold a request forever. Every socket
    read and write of the transport's connections asks :meth:`cap` for its timeout, which is
    never beyond the deadline.
    """

    def __init__(self) -> None:
        self.at: float | None = None

    def cap(self, timeout: float | None, error: type[Exception]) -> float | None:
        """``timeout`` shortened to what is left before the deadline; ``error`` if none is."""
        if self.at is None:
            return timeout
        left = self.at - time.monotonic()
        if left <= 0:
            raise error("the request's deadline has passed")
        return left if timeout is None else min(timeout, left)


class _DeadlineStream(httpcore.NetworkStream):
    """A connection whose every read and write ends by the deadline."""

    def __init__(self, stream: httpcore.NetworkStream, deadline: _Deadline) -> None:
        self._stream = stream
        self._deadline = deadline

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._stream.read(max_bytes, self._deadline.cap(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        # In parts: one write of a large buffer to a server that reads slowly could otherwise
        # block for a full timeout per socket send.
        for start in range(0, len(buffer), _WRITE_PART_BYTES):
            part = buffer[start : start + _WRITE_PART_BYTES]
            self._stream.write(part, self._deadline.cap(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._stream.close()

    def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        limit = self._deadline.cap(timeout, httpcore.ConnectTimeout)
        return _DeadlineStream(
            self._stream.start_tls(ssl_context, server_hostname, limit), self._deadline
        )

    def get_extra_info(self, info: str) -> Any:
        return self._stream.get_extra_info(info)


class _DeadlineBackend(httpcore.NetworkBackend):
    """httpcore's own sockets, wrapped in :class:`_DeadlineStream`."""

    def __init__(self, deadline: _Deadline) -> None:
        self._backend = httpcore.SyncBackend()
        self._deadline = deadline

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        limit = self._deadline.cap(timeout, httpcore.ConnectTimeout)
        stream = self._backend.connect_tcp(host, port, limit, local_address, socket_options)
        return _DeadlineStream(stream, self._deadline)

    def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        limit = self._deadline.cap(timeout, httpcore.ConnectTimeout)
        stream = self._backend.connect_unix_socket(path, limit, socket_options)
        return _DeadlineStream(stream, self._deadline)

    def sleep(self, seconds: float) -> None:
        self._backend.sleep(seconds)


# httpcore's errors as the httpx errors callers catch; the most specific first.
_CORE_ERRORS: Final[tuple[tuple[type[Exception], type[httpx.TransportError]], ...]] = (
    (httpcore.ConnectTimeout, httpx.ConnectTimeout),
    (httpcore.ReadTimeout, httpx.ReadTimeout),
    (httpcore.WriteTimeout, httpx.WriteTimeout),
    (httpcore.PoolTimeout, httpx.PoolTimeout),
    (httpcore.TimeoutException, httpx.TimeoutException),
    (httpcore.ConnectError, httpx.ConnectError),
    (httpcore.ReadError, httpx.ReadError),
    (httpcore.WriteError, httpx.WriteError),
    (httpcore.NetworkError, httpx.NetworkError),
    (httpcore.UnsupportedProtocol, httpx.UnsupportedProtocol),
    (httpcore.ProxyError, httpx.ProxyError),
    (httpcore.RemoteProtocolError, httpx.RemoteProtocolError),
    (httpcore.LocalProtocolError, httpx.LocalProtocolError),
    (httpcore.ProtocolError, httpx.ProtocolError),
)


@contextlib.contextmanager
def _as_httpx_errors() -> Iterator[None]:
    try:
        yield
    except Exception as exc:
        for core, mapped in _CORE_ERRORS:
            if isinstance(exc, core):
                raise mapped(str(exc)) from exc
        raise


class _CoreStream(httpx.SyncByteStream):
    def __init__(self, stream: Iterable[bytes]) -> None:
        self._stream = stream

    def __iter__(self) -> Iterator[bytes]:
        with _as_httpx_errors():
            yield from self._stream

    def close(self) -> None:
        close = getattr(self._stream, "close", None)
        if callable(close):
            close()


class _DeadlineTransport(httpx.BaseTransport):
    """httpx's HTTP/1.1 transport, on sockets that honour :class:`_Deadline`."""

    def __init__(self, verify_tls: bool, deadline: _Deadline) -> None:
        self._pool = httpcore.ConnectionPool(
            ssl_context=httpx.create_ssl_context(verify=verify_tls),
            network_backend=_DeadlineBackend(deadline),
        )

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        assert isinstance(request.stream, httpx.SyncByteStream)
        core = httpcore.Request(
            method=request.method,
            url=httpcore.URL(
                scheme=request.url.raw_scheme,
                host=request.url.raw_host,
                port=request.url.port,
                target=request.url.raw_path,
            ),
            headers=request.headers.raw,
            content=request.stream,
            extensions=request.extensions,
        )
        with _as_httpx_errors():
            response = self._pool.handle_request(core)
        assert isinstance(response.stream, Iterable)
        return httpx.Response(
            status_code=response.status,
            headers=response.headers,
            stream=_CoreStream(response.stream),
            extensions=response.extensions,
        )

    def close(self) -> None:
        self._pool.close()


# --- requests ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Failure:
    """Why one attempt failed, and whether to retry.

    The message reads "<cause>[ after N retries][: <detail>][; <hint>]".
    """

    cause: str
    detail: str = ""
    hint: str = ""
    retry: bool = True
    wait: float | None = None  # the server's Retry-After, if it gave one

    def message(self, retries: int) -> str:
        text = self.cause
        if retries:
            text += f" after {retries} {'retry' if retries == 1 else 'retries'}"
        if self.detail:
            text += f": {self.detail}"
        return f"{text}; {self.hint}" if self.hint else text


@dataclass(frozen=True)
class _Answer:
    """The decoded JSON of a successful attempt."""

    payload: object


class _Expired(Exception):
    """The deadline passed between two pieces of the answer."""


class _Transport:
    """Sends JSON requests with retries, backoff, ``Retry-After``, a rate limit and the limits of
    :class:`HttpPolicy` (deadline, time budget, answer size, no redirects).

    Not thread-safe: one suspect queries one batch at a time.
    """

    def __init__(
        self,
        policy: HttpPolicy,
        *,
        client: httpx.Client | None,
        sleep: Sleep,
        clock: Clock,
        seed: int,
    ) -> None:
        if not isinstance(policy, HttpPolicy):
            raise ConfigError(f"policy must be an HttpPolicy, got {type(policy).__name__}")
        self.policy = policy
        self._deadline = _Deadline()
        self._owns_client = client is None
        self._client = (
            client
            if client is not None
            else httpx.Client(
                # verify also reaches the transports httpx makes for proxies from the environment.
                verify=policy.verify_tls,
                transport=_DeadlineTransport(policy.verify_tls, self._deadline),
            )
        )
        self._sleep = sleep
        self._clock = clock
        self._random = random.Random(seed)
        self._last_start: float | None = None
        self._budget_start: float | None = None
        self.requests_sent = 0
        self.retries_done = 0

    def close(self) -> None:
        if self._owns_client:
            self._client.close()

    def request(
        self,
        method: str,
        url: str,
        *,
        body: object = None,
        headers: Mapping[str, str] | None = None,
    ) -> object:
        """Send a request and return the answer's decoded JSON.

        Raises:
            QueryError: the request failed for good, the answer is not JSON or too large, or
                the time budget is spent.
        """
        content = None
        send_headers = self._headers(headers or {})
        if body is not None:
            content = json.dumps(body, separators=(",", ":"), allow_nan=False).encode()
            send_headers["Content-Type"] = "application/json"
        attempt = 0
        while True:
            self._check_budget()
            self._pace()
            self.requests_sent += 1
            outcome = self._attempt(method, url, content, send_headers)
            if isinstance(outcome, _Answer):
                return outcome.payload
            if not outcome.retry or attempt >= self.policy.retries:
                raise QueryError(outcome.message(attempt))
            wait = outcome.wait if outcome.wait is not None else self._backoff(attempt)
            self._wait(wait, outcome.message(attempt))
            attempt += 1
            self.retries_done += 1

    def _headers(self, extra: Mapping[str, str]) -> dict[str, str]:
        headers = {
            "User-Agent": f"ownmark/{__version__}",
            "Accept": "application/json",
            # Compressed answers could expand far beyond their size on the wire.
            "Accept-Encoding": "identity",
        }
        headers.update(self.policy.headers)
        headers.update(extra)
        if self.policy.token is not None:
            headers["Authorization"] = f"Bearer {self.policy.token}"
        return headers

    # --- time ---------------------------------------------------------------------------------

    def _budget_left(self) -> float | None:
        """Seconds left of the time budget (all of it before the first request), or None."""
        total = self.policy.total_seconds
        if total is None:
            return None
        if self._budget_start is None:
            return total
        return total - (self._clock() - self._budget_start)

    def _check_budget(self) -> None:
        if self._budget_start is None:
            self._budget_start = self._clock()
        left = self._budget_left()
        if left is not None and left <= 0:
            raise QueryError(
                f"time budget exhausted: the {self.policy.total_seconds:g} s allowed for "
                "querying this suspect are spent, so no further request is sent; raise "
                "--time-budget to allow more"
            )

    def _wait(self, seconds: float, why: str) -> None:
        """Sleep ``seconds``, or fail now if that would pass the time budget."""
        left = self._budget_left()
        if left is not None and seconds >= left:
            raise QueryError(
                f"{why}; time budget exhausted: waiting {seconds:.3g} s more would pass the "
                f"{self.policy.total_seconds:g} s allowed for this suspect (--time-budget)"
            )
        self._sleep(seconds)

    def _pace(self) -> None:
        """Wait until the rate limit allows the next request."""
        if self.policy.rate_limit is None:
            return
        interval = 1.0 / self.policy.rate_limit
        now = self._clock()
        if self._last_start is not None and now - self._last_start < interval:
            self._wait(interval - (now - self._last_start), "the rate limit holds the request")
            now = self._clock()
        self._last_start = now

    def _backoff(self, attempt: int) -> float:
        cap = min(self.policy.max_backoff, self.policy.backoff * 2.0**attempt)
        return cap * self._random.uniform(0.5, 1.0)

    # --- one attempt --------------------------------------------------------------------------

    def _attempt(
        self, method: str, url: str, content: bytes | None, headers: dict[str, str]
    ) -> _Answer | _Failure:
        """One HTTP request, bounded by the deadline and what is left of the budget."""
        deadline, budget = self.policy.deadline, self._budget_left()
        limit = (
            budget if deadline is None else deadline if budget is None else min(deadline, budget)
        )
        cut_by_budget = limit is not None and limit != deadline
        expires = None if limit is None else time.monotonic() + limit
        self._deadline.at = expires
        try:
            with self._client.stream(
                method,
                url,
                content=content,
                headers=headers,
                timeout=self.policy.timeout,
                follow_redirects=False,
            ) as response:
                return self._answer(response, url, expires)
        except (httpx.TimeoutException, _Expired):
            if expires is not None and time.monotonic() >= expires - _DEADLINE_SLACK_S:
                if cut_by_budget:
                    return _Failure(
                        "time budget exhausted",
                        f"{method} {url} was cut off when the {self.policy.total_seconds:g} s "
                        "allowed for this suspect ran out",
                        "raise --time-budget to allow more",
                        retry=False,
                    )
                return _Failure(
                    f"{method} {url} timed out",
                    f"no complete answer within the {deadline:g} s deadline",
                    "raise --deadline if the server is this slow",
                )
            return _Failure(
                f"{method} {url} timed out",
                f"no answer within {self.policy.timeout} s",
                "raise --timeout if the server is slow",
            )
        except httpx.ConnectError as exc:
            return _Failure(
                f"cannot connect to {_origin(url)} ({_reason(exc)})",
                hint="is the server running?",
            )
        except (httpx.UnsupportedProtocol, httpx.InvalidURL) as exc:
            raise QueryError(f"cannot query {url}: {_reason(exc)}") from exc
        except httpx.TransportError as exc:
            return _Failure(f"the connection to {_origin(url)} failed ({_reason(exc)})")
        finally:
            self._deadline.at = None

    def _answer(
        self, response: httpx.Response, url: str, expires: float | None
    ) -> _Answer | _Failure:
        status = response.status_code
        if 300 <= status < 400:
            return _redirect_failure(response, url)
        if response.is_success:
            limit = self.policy.max_response_bytes
            return _Answer(_decode_json(_read_body(response, url, limit, expires), url))
        text = _read_body(response, url, _ERROR_BODY_BYTES, expires, truncate=True)
        return self._http_failure(status, response.headers, text, url)

    def _http_failure(self, status: int, headers: httpx.Headers, body: bytes, url: str) -> _Failure:
        cause = f"HTTP {status} from {url}"
        detail = _server_message(body)
        if status in _RETRY_STATUSES:
            wait = _retry_after(headers) if status in (429, 503) else None
            if wait is not None and wait > self.policy.max_retry_after:
                return _Failure(
                    cause,
                    f"the server asks to wait {wait:g} s (Retry-After), more than the "
                    f"{self.policy.max_retry_after:g} s allowed",
                    "try again later",
                    retry=False,
                )
            hint = (
                "the server is rate-limiting; query at a lower --rate-limit"
                if status == 429
                else ""
            )
            return _Failure(cause, detail, hint, wait=wait)
        if status == 401:
            hint = (
                "the server refused the token; check --token"
                if self.policy.token is not None
                else "the server needs a token; pass --token"
            )
        elif status == 403:
            hint = "the token has no access to this model; check --token"
        elif status == 404:
            hint = "check the URL and the model name"
        elif status == 413:
            hint = "the batch is too large for the server; lower --batch"
        else:
            hint = ""
        return _Failure(cause, detail, hint, retry=False)


def _read_body(
    response: httpx.Response,
    url: str,
    limit: int,
    expires: float | None,
    *,
    truncate: bool = False,
) -> bytes:
    """The answer's body, decompressed, never holding more than ``limit`` + 1 bytes of it.

    Beyond ``limit`` it stops reading: with ``truncate`` it returns the first ``limit`` bytes,
    else it raises QueryError. gzip and deflate (which the client does not ask for) are
    decompressed in bounded steps, so a small compressed answer cannot expand without limit.
    """
    encoding = response.headers.get("Content-Encoding", "").strip().lower()
    decoder: Any = None
    if encoding in ("gzip", "x-gzip"):
        decoder = zlib.decompressobj(16 + zlib.MAX_WBITS)
    elif encoding == "deflate":
        decoder = zlib.decompressobj()
    elif encoding not in ("", "identity"):
        raise QueryError(
            f"the answer from {url} is compressed with {_one_line(encoding, 40)!r}, which this "
            "client does not read (it asks for no compression)"
        )

    def too_large() -> QueryError:
        return QueryError(
            f"the answer from {url} is larger than {_size(limit)}, the most this client reads; "
            "it stopped reading there (raise --max-response-mb if the answer is genuine)"
        )

    declared = response.headers.get("Content-Length", "").strip()
    if not truncate and decoder is None and declared.isdigit() and int(declared) > limit:
        raise too_large()
    parts: list[bytes] = []
    size = 0
    try:
        for chunk in response.iter_raw():
            if expires is not None and time.monotonic() > expires:
                raise _Expired
            pending = chunk
            while pending:
                if decoder is None:
                    out, pending = pending, b""
                else:
                    before = pending
                    out = decoder.decompress(pending, limit - size + 1)
                    pending = decoder.unconsumed_tail
                    if not out and pending == before:
                        break  # no progress: let the next chunk (or the end) decide
                size += len(out)
                if size > limit:
                    if not truncate:
                        raise too_large()
                    parts.append(out[: len(out) - (size - limit)])
                    return b"".join(parts)
                parts.append(out)
    except zlib.error as exc:
        raise QueryError(
            f"the answer from {url} is not valid {encoding} ({_one_line(exc, 80)})"
        ) from exc
    return b"".join(parts)


def _origin_of(url: str) -> tuple[str, str, int | None] | None:
    """(scheme, host, port) with the scheme's default port filled in; None if unparsable."""
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    default = {"http": 80, "https": 443}.get(scheme)
    return scheme, (parts.hostname or "").lower(), port if port is not None else default


def _redirect_failure(response: httpx.Response, url: str) -> _Failure:
    """Why a redirect is not followed (never retried)."""
    cause = f"HTTP {response.status_code} from {url}"
    location = response.headers.get("Location", "").strip()
    if not location:
        return _Failure(cause, "a redirect without a Location", retry=False)
    target = urljoin(url, location)
    origin = _origin_of(url)
    if origin is None or _origin_of(target) != origin:
        return _Failure(
            cause,
            f"the server redirects to another server, {_one_line(target, 120)}",
            "ownmark never follows redirects, least of all to another scheme, host or port, "
            "where the key images and the token would go to a server that is not the suspect",
            retry=False,
        )
    return _Failure(
        cause,
        f"the server redirects to {_one_line(target, 120)}",
        "ownmark does not follow redirects (the evidence names the address that answered); "
        "query that URL instead",
        retry=False,
    )


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def _reason(exc: BaseException) -> str:
    """A short reason from a network exception: ``connection refused``, not ``[Errno 111] ...``."""
    text = re.sub(r"^\[Errno -?\d+\]\s*", "", _one_line(exc, 120))
    return text[:1].lower() + text[1:] if text else type(exc).__name__


def _decode_json(body: bytes, url: str) -> object:
    try:
        return json.loads(body)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError
        raise QueryError(f"malformed JSON in the answer from {url} ({_one_line(exc, 80)})") from exc


def _server_message(body: bytes) -> str:
    """The server's error text: the ``error`` (or ``detail``, ``message``) field, else the body."""
    text: object = body.decode("utf-8", errors="replace")
    try:
        payload = json.loads(body)
    except (ValueError, RecursionError):
        payload = None
    if isinstance(payload, dict):
        for key in ("error", "detail", "message"):
            if key in payload:
                value = payload[key]
                text = value if isinstance(value, str) else json.dumps(value)
                break
    return _one_line(text) or "(empty answer)"


def _retry_after(headers: httpx.Headers) -> float | None:
    """Seconds from a ``Retry-After`` header (seconds or an HTTP date), or None."""
    value = headers.get("Retry-After", "").strip()
    if not value:
        return None
    if re.fullmatch(r"[0-9]+(\.[0-9]+)?", value):
        return float(value)
    when = _http_date(value)
    if when is None:
        return None
    # Measured against the server's own Date header when it sends one, so clock skew between
    # the machines does not matter.
    now = _http_date(headers.get("Date", "")) or datetime.now(timezone.utc)
    return max(0.0, (when - now).total_seconds())


def _http_date(text: str) -> datetime | None:
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    return when if when.tzinfo is not None else when.replace(tzinfo=timezone.utc)


# ---------------------------------------------------------------------------------------------
# answers
#
# A label answer is taken as it is (out-of-range labels are the verifier's to refuse). Scores
# are different: the label they name is their argmax, and an argmax over scores that tie for
# the top, or that are NaN or infinite, picks the first index, so a broken or uniform model
# would read as a confident "class 0". Such a row gives an InvalidAnswer for its image (which
# the verifier records as a failed query), while the other images of the batch keep theirs.

#: One image's answer: its label, or why it has none.
Answer = int | InvalidAnswer


def _as_label(value: object, where: str) -> int:
    """An integer label (ints, and floats with an integer value), else QueryError."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    raise QueryError(f"{where} is {_one_line(repr(value), 40)}, not an integer label")


def _score(raw: object, where: str) -> float:
    """A score as a float; an integer too large for a float becomes ±inf (non-finite)."""
    value = raw.item() if isinstance(raw, np.generic) else raw
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise QueryError(f"{where} holds {_one_line(repr(value), 40)}, not a score")
    try:
        return float(value)
    except OverflowError:
        return math.inf if value > 0 else -math.inf


def _score_rows(rows: Sequence[Sequence[object]], where: Callable[[int], str]) -> torch.Tensor:
    """Rows of equally many JSON scores as an N×K float64 tensor (QueryError on non-numbers)."""
    return torch.tensor(
        [[_score(v, where(i)) for v in row] for i, row in enumerate(rows)], dtype=torch.float64
    )


def _top_labels(rows: Sequence[Sequence[object]], where: Callable[[int], str]) -> list[Answer]:
    """The argmax of each row of scores, or InvalidAnswer (tie for the top, NaN, ±inf)."""
    if not rows:
        return []
    return labels_from_scores(_score_rows(rows, where))


def _answer_to_label(value: object, where: str) -> Answer:
    """A label from one free-form answer: an integer, an integer string, or a row of scores."""
    if isinstance(value, np.ndarray | torch.Tensor):
        value = value.tolist()
    if isinstance(value, str) and _INTEGER_TEXT.fullmatch(value.strip()):
        return int(value)
    if isinstance(value, list | tuple):
        # One score says nothing about which class wins, so it is refused rather than argmax'd.
        if len(value) < 2:
            raise QueryError(f"{where} is a list of {len(value)} values; expected 2 or more scores")
        return _top_labels([value], lambda _: where)[0]
    return _as_label(value, where)


def normalize_answers(answers: object, count: int) -> list[Answer]:
    """Validate free-form answers (from a template or a Python adapter) into ``count`` labels.

    Each answer may be an integer label (ints, integer-valued floats, numpy scalars, or a
    string of digits) or a row of at least two scores, taken as its argmax. A numpy array or
    tensor is first turned into lists. A row of scores that ties for the top or holds NaN or
    ±inf (``Infinity`` in JSON, or a number too large for a float) names no class: that
    image's answer is an :class:`~ownmark.verify.suspects.InvalidAnswer`.

    Raises:
        QueryError: not a list of ``count`` answers, or an answer is not a label or scores.
    """
    if isinstance(answers, np.ndarray | torch.Tensor):
        answers = answers.tolist()
    if not isinstance(answers, list | tuple):
        raise QueryError(
            f"expected a list of {count} answers, got {_one_line(type(answers).__name__)}"
        )
    if len(answers) != count:
        raise QueryError(f"expected {count} answers, got {len(answers)}")
    return [_answer_to_label(value, f"answer {i}") for i, value in enumerate(answers)]


@dataclass(frozen=True)
class _Output:
    """One output tensor of a v2 answer, its data flattened."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    data: list[object]

    def describe(self) -> str:
        return f"{self.name} {list(self.shape)}"


def _flatten(value: object, where: str) -> list[object]:
    """Flatten nested lists without recursion (a hostile answer may nest very deep)."""
    if not isinstance(value, list):
        raise QueryError(f"{where} has no 'data' list")
    flat: list[object] = []
    stack = [iter(value)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                stack.append(iter(item))
                break
            flat.append(item)
        else:
            stack.pop()
    return flat


def _parse_outputs(payload: object, request_id: str | None) -> list[_Output]:
    if not isinstance(payload, dict):
        raise QueryError(f"the answer is a JSON {_json_kind(payload)}, not an object")
    if payload.get("error") not in (None, ""):
        raise QueryError(f"the server answered an error: {_one_line(payload['error'])}")
    answered_id = payload.get("id")
    if request_id is not None and answered_id is not None and answered_id != request_id:
        raise QueryError(
            f"the answer is for request {_one_line(answered_id, 60)!r}, not {request_id!r}"
        )
    raw_outputs = payload.get("outputs")
    if not isinstance(raw_outputs, list):
        raise QueryError("the answer has no 'outputs' list")
    outputs: list[_Output] = []
    for index, raw in enumerate(raw_outputs):
        where = f"output {index}"
        if not isinstance(raw, dict):
            raise QueryError(f"{where} is not a JSON object")
        name, datatype, shape = raw.get("name"), raw.get("datatype"), raw.get("shape")
        if not isinstance(name, str):
            raise QueryError(f"{where} has no name")
        where = f"output {_one_line(name, 40)!r}"
        if not isinstance(datatype, str):
            raise QueryError(f"{where} has no datatype")
        if not (
            isinstance(shape, list)
            and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
        ):
            raise QueryError(f"{where} has no valid shape (a list of sizes)")
        data = _flatten(raw.get("data"), where)
        if len(data) != math.prod(shape):
            raise QueryError(f"{where} has shape {shape} but {len(data)} values")
        outputs.append(_Output(name, datatype.upper(), tuple(shape), data))
    return outputs


def _json_kind(value: object) -> str:
    if isinstance(value, list):
        return "list"
    if isinstance(value, str):
        return "string"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    return "number"


def _candidates(outputs: Sequence[_Output], kind: str) -> list[_Output]:
    """Outputs that could hold ``kind`` answers: by conventional name first, else by type."""
    if kind == "label":
        named = [o for o in outputs if o.name.lower() in _LABEL_NAMES]
        return named or [
            o
            for o in outputs
            if o.datatype in _INT_TYPES
            and not o.name.lower().startswith("topk")
            and (len(o.shape) == 1 or (len(o.shape) == 2 and o.shape[1] == 1))
        ]
    if kind == "topk":
        return [o for o in outputs if o.name.lower() == "topk_labels"]
    named = [o for o in outputs if o.name.lower() == "probabilities"]
    # topk_scores is [N, k] floats too, but its argmax is a rank, not a class.
    return named or [
        o
        for o in outputs
        if o.datatype in _FLOAT_TYPES
        and not o.name.lower().startswith("topk")
        and len(o.shape) == 2
        and o.shape[1] >= 2
    ]


_KIND_WORDS: Final = {"label": "labels", "topk": "top-k labels", "probabilities": "probabilities"}


def _rows(output: _Output, count: int) -> list[list[object]]:
    width = output.shape[1]
    return [output.data[i * width : (i + 1) * width] for i in range(count)]


def _decode(kind: str, output: _Output, count: int) -> list[Answer]:
    where = f"output {_one_line(output.name, 40)!r}"
    shape = output.shape
    if kind == "label":
        if not (len(shape) == 1 or (len(shape) == 2 and shape[1] == 1)):
            raise QueryError(f"{where} has shape {list(shape)}; expected [{count}] labels")
        if shape[0] != count:
            raise QueryError(f"expected {count} labels, got {shape[0]}")
        return [_as_label(v, f"a label in {where}") for v in output.data]
    if len(shape) != 2 or shape[1] < 1:
        raise QueryError(f"{where} has shape {list(shape)}; expected [{count}, k]")
    if shape[0] != count:
        raise QueryError(f"expected {count} rows in {where}, got {shape[0]}")
    width = shape[1]
    if kind == "probabilities" and width < 2:
        raise QueryError(f"{where} has 1 score per image; an argmax needs 2 or more")
    if kind == "topk":
        return [_as_label(output.data[i * width], f"a label in {where}") for i in range(count)]
    return _top_labels(_rows(output, count), lambda i: f"row {i} of {where}")


def _companion_claims(output: _Output, count: int) -> list[Answer | None] | None:
    """What another output of the answer says about each image's label, if it says anything.

    ``label``/``labels`` [N] and the first column of ``topk_labels`` [N, k] name a label;
    ``probabilities`` [N, K] names its argmax (or InvalidAnswer); ``topk_scores`` [N, k] must
    rank its first entry strictly highest (else InvalidAnswer) and says nothing more (None).
    Outputs of another shape or name say nothing (None for the whole output).
    """
    name, shape = output.name.lower(), output.shape
    where = f"output {_one_line(output.name, 40)!r}"
    if not shape or shape[0] != count:
        return None
    if name in _LABEL_NAMES and (len(shape) == 1 or (len(shape) == 2 and shape[1] == 1)):
        return [_as_label(v, f"a label in {where}") for v in output.data]
    if len(shape) != 2 or shape[1] < 1:
        return None
    width = shape[1]
    if name == "topk_labels":
        return [_as_label(output.data[i * width], f"a label in {where}") for i in range(count)]
    if name == "probabilities" and width >= 2:
        return list(_top_labels(_rows(output, count), lambda i: f"row {i} of {where}"))
    if name != "topk_scores":
        return None
    scores = _score_rows(_rows(output, count), lambda i: f"row {i} of {where}")
    if width == 1:
        return [
            None if bool(torch.isfinite(row).all()) else InvalidAnswer("non-finite scores")
            for row in scores
        ]
    ranked: list[Answer | None] = []
    for claim in labels_from_scores(scores):
        if isinstance(claim, InvalidAnswer):
            ranked.append(claim)
        elif claim != 0:
            ranked.append(InvalidAnswer("the top-k scores do not rank the first label highest"))
        else:
            ranked.append(None)
    return ranked


def _screen(answers: list[Answer], chosen: _Output, outputs: Sequence[_Output]) -> list[Answer]:
    """Labels checked against the other outputs of the same answer.

    A server that answers a label and, beside it, scores that tie for the top (or NaN) broke
    the tie itself; a label that disagrees with its own top-k list or probabilities is
    ambiguous. Either way that image's label is not taken (InvalidAnswer).
    """
    count = len(answers)
    screened = list(answers)
    for output in outputs:
        if output is chosen:
            continue
        claims = _companion_claims(output, count)
        if claims is None:
            continue
        for i, claim in enumerate(claims):
            if claim is None or not isinstance(screened[i], int):
                continue
            if isinstance(claim, InvalidAnswer):
                screened[i] = claim
            elif claim != screened[i]:
                screened[i] = InvalidAnswer(
                    f"the answer's outputs disagree ({_one_line(output.name, 40)!r} says "
                    f"{claim}, not {screened[i]})"
                )
    return screened


def parse_v2_response(
    payload: object, count: int, answer: str = "auto", *, request_id: str | None = None
) -> list[Answer]:
    """The ``count`` labels in an Open Inference Protocol answer (decoded JSON).

    ``answer`` picks the output (default "auto"):

    * "label": an integer output named ``label`` (or, when none is, the only integer output
      of shape [N] or [N, 1], e.g. Triton's ``OUTPUT__0``);
    * "topk": the first column of ``topk_labels`` [N, k];
    * "probabilities": the argmax of ``probabilities`` [N, K] (or of the only float output
      of shape [N, K], K >= 2, e.g. ``logits``);
    * "auto": the first of these three that the answer has.

    Data may be flat or nested. ``request_id``, when given, must match the answer's ``id``
    if it has one.

    An image gets an :class:`~ownmark.verify.suspects.InvalidAnswer` instead of a label when
    its scores name no class: a row of probabilities whose top score is tied (uniform
    probabilities included) or that holds NaN or ±inf (JSON ``NaN``, ``Infinity``, or a
    number too large for a float). A label or top-k answer is also cross-checked against the
    other outputs the answer carries (``label``, ``topk_labels``, ``topk_scores``,
    ``probabilities``): scores beside it that tie for the top or are not finite, or an output
    that names another label, make that image's answer invalid too. The verifier records an
    InvalidAnswer as a failed query, never a match.

    Raises:
        QueryError: the answer is malformed, lacks the output, has the wrong number of
            answers or non-integer labels.
    """
    if answer not in ANSWER_KINDS:
        raise ConfigError(
            f"unknown answer kind {answer!r}; choose one of {', '.join(ANSWER_KINDS)}"
        )
    outputs = _parse_outputs(payload, request_id)
    kinds = ("label", "topk", "probabilities") if answer == "auto" else (answer,)
    for kind in kinds:
        found = _candidates(outputs, kind)
        if len(found) > 1:
            names = ", ".join(o.describe() for o in found)
            raise QueryError(
                f"the API answers several possible {_KIND_WORDS[kind]} ({names}); "
                "cannot tell which one is the prediction"
            )
        if found:
            answers = _decode(kind, found[0], count)
            return answers if kind == "probabilities" else _screen(answers, found[0], outputs)
    described = ", ".join(o.describe() for o in outputs) or "no outputs"
    if answer == "auto":
        raise QueryError(
            f"the API answers {_one_line(described)}, none of which is labels, "
            "top-k labels or a score matrix"
        )
    usable = [k for k in ("label", "topk", "probabilities") if _candidates(outputs, k)]
    alternative = f" or --answer {usable[0]}" if usable else ""
    raise QueryError(
        f"the API answers {_one_line(described)} but {_KIND_WORDS[answer]} were expected; "
        f"rerun with --answer auto{alternative}"
    )


# ---------------------------------------------------------------------------------------------
# suspects

_S = TypeVar("_S", bound="_HttpSuspect")


def _image_batch(images: torch.Tensor) -> npt.NDArray[np.uint8]:
    """The batch as a contiguous uint8 N×C×H×W numpy array (a copy the callee may keep)."""
    if not isinstance(images, torch.Tensor):
        raise ConfigError(f"images must be a torch tensor, got {type(images).__name__}")
    if images.dtype != torch.uint8 or images.dim() != 4:
        raise ConfigError(
            f"images must be a uint8 N×C×H×W tensor, got {images.dtype} of shape "
            f"{list(images.shape)}"
        )
    return np.array(images.detach().cpu().numpy(), dtype=np.uint8, copy=True, order="C")


class _HttpSuspect:
    """What the HTTP suspects share: the transport, the counters, closing."""

    protocol = ""

    def __init__(
        self,
        policy: HttpPolicy,
        client: httpx.Client | None,
        sleep: Sleep,
        clock: Clock,
        seed: int,
    ) -> None:
        self._transport = _Transport(policy, client=client, sleep=sleep, clock=clock, seed=seed)
        self._images_sent = 0

    @property
    def policy(self) -> HttpPolicy:
        return self._transport.policy

    @property
    def requests_sent(self) -> int:
        """HTTP requests made, retries and metadata requests included."""
        return self._transport.requests_sent

    @property
    def retries_done(self) -> int:
        """Requests that were retries of a failed one."""
        return self._transport.retries_done

    @property
    def images_sent(self) -> int:
        """Images passed to :meth:`query` (each counted once, however many retries)."""
        return self._images_sent

    def _take(self, images: torch.Tensor) -> npt.NDArray[np.uint8] | None:
        """The validated uint8 batch to send (counted), or None for no images."""
        batch = _image_batch(images)
        if int(batch.shape[0]) == 0:
            return None
        self._images_sent += int(batch.shape[0])
        return batch

    def close(self) -> None:
        """Close the HTTP connections (a client passed in by the caller stays open)."""
        self._transport.close()

    def __enter__(self: _S) -> _S:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


def _check_url(url: object, what: str) -> str:
    if not isinstance(url, str):
        raise ConfigError(f"{what} must be a URL string, got {type(url).__name__}")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(f"{what} {url!r} must start with http:// or https:// and name a host")
    return url


_MODEL_PATH = re.compile(
    r"(?P<prefix>.*?)/v2/models/(?P<name>[^/]+)(?:/versions/(?P<version>[^/]+))?(?:/infer)?"
)


class V2Suspect(_HttpSuspect):
    """A suspect behind an Open Inference Protocol (KServe v2) API.

    Args:
        url: the server ("http://host:port", with ``model``) or the model's URL
            ("http://host:port/v2/models/NAME", optionally ending in "/versions/V" or "/infer").
        model: the model name, when ``url`` does not name it (default None).
        policy: timeouts, retries, rate limit and credentials (default ``HttpPolicy()``).
        answer: which output holds the prediction, one of :data:`ANSWER_KINDS` (default
            "auto"; see :func:`parse_v2_response`).
        client: an ``httpx.Client`` to send through (default: a new one, closed by
            :meth:`close`).
        sleep, clock: how to wait and tell time (default ``time.sleep``, ``time.monotonic``).
        seed: seeds the backoff jitter (default 0).
        input_name: the model's image input (default "images"; Triton models often say
            "INPUT__0").

    Each :meth:`query` sends one infer request (the caller batches) with a fresh ``id``.
    """

    protocol = "v2"

    def __init__(
        self,
        url: str,
        model: str | None = None,
        *,
        policy: HttpPolicy = _DEFAULT_POLICY,
        answer: str = "auto",
        client: httpx.Client | None = None,
        sleep: Sleep = time.sleep,
        clock: Clock = time.monotonic,
        seed: int = 0,
        input_name: str = "images",
    ) -> None:
        _check_url(url, "suspect URL")
        if answer not in ANSWER_KINDS:
            raise ConfigError(
                f"unknown answer kind {answer!r}; choose one of {', '.join(ANSWER_KINDS)}"
            )
        if model is not None and (not isinstance(model, str) or not model.strip()):
            raise ConfigError(f"model name must be a non-empty string, got {model!r}")
        if not isinstance(input_name, str) or not input_name:
            raise ConfigError(f"input_name must be a non-empty string, got {input_name!r}")
        parts = urlsplit(url)
        if parts.query or parts.fragment:
            raise ConfigError(
                f"suspect URL {url!r} must not have a query (?...) or fragment (#...)"
            )
        path = parts.path.rstrip("/")
        match = _MODEL_PATH.fullmatch(path)
        version: str | None = None
        if match is not None:
            prefix, name = match["prefix"], unquote(match["name"])
            version = unquote(match["version"]) if match["version"] else None
            if model is not None and model != name:
                raise ConfigError(f"the URL names model {name!r} but the model given is {model!r}")
        elif model is None:
            raise ConfigError(
                f"suspect URL {url!r} does not name a model; give the model name "
                "(--model-name NAME) or a URL ending in /v2/models/NAME"
            )
        else:
            prefix, name = path, model
        super().__init__(policy, client, sleep, clock, seed)
        self._answer = answer
        self._input_name = input_name
        self._model = name
        self._base = f"{parts.scheme}://{parts.netloc}{prefix}"
        self._model_url = f"{self._base}/v2/models/{quote(name, safe='')}"
        if version is not None:
            self._model_url += f"/versions/{quote(version, safe='')}"
        self._infer_url = f"{self._model_url}/infer"
        self._metadata: dict[str, Any] | None = None

    @property
    def address(self) -> str:
        """The infer URL."""
        return self._infer_url

    @property
    def model(self) -> str:
        return self._model

    def metadata(self) -> dict[str, Any]:
        """The model's metadata (``GET .../v2/models/NAME``), fetched once.

        Raises:
            QueryError: the request failed or the answer is not a JSON object.
        """
        if self._metadata is None:
            payload = self._transport.request("GET", self._model_url)
            if not isinstance(payload, dict):
                raise QueryError(f"the model metadata at {self._model_url} is not a JSON object")
            self._metadata = payload
        return self._metadata

    def check_input_shape(self, shape: tuple[int, int, int]) -> None:
        """Check that the model takes uint8 images of ``shape`` (C, H, W) as it declares.

        A declared size of -1 matches any size; a declared shape of 4 sizes has the batch
        first.

        Raises:
            QueryError: the metadata cannot be fetched or lists no inputs.
            ConfigError: the model declares another input name, type or shape.
        """
        inputs = self.metadata().get("inputs")
        if not isinstance(inputs, list) or not inputs:
            raise QueryError(f"the model metadata at {self._model_url} lists no inputs")
        named = [i for i in inputs if isinstance(i, dict) and i.get("name") == self._input_name]
        if not named:
            found = ", ".join(repr(i.get("name")) for i in inputs if isinstance(i, dict))
            raise ConfigError(
                f"the model at {self._model_url} has no input named {self._input_name!r} "
                f"(inputs: {_one_line(found)}); pass the right input name"
            )
        declared = named[0].get("shape")
        datatype = named[0].get("datatype")
        if isinstance(datatype, str) and datatype.upper() != "UINT8":
            raise ConfigError(
                f"the model at {self._model_url} takes {datatype} input, "
                "but ownmark sends UINT8 images; serve a model that takes uint8 pixels"
            )
        if not (
            isinstance(declared, list)
            and all(isinstance(d, int) and not isinstance(d, bool) for d in declared)
        ):
            raise QueryError(f"the model metadata at {self._model_url} has no input shape")
        sizes = declared[1:] if len(declared) == 4 else declared
        wanted = "×".join(str(s) for s in shape)
        if len(sizes) != 3 or any(d not in (-1, s) for d, s in zip(sizes, shape, strict=True)):
            raise ConfigError(
                f"the model at {self._model_url} takes images of shape {declared}, but these "
                f"images are {wanted}; use a key made for this model's input size"
            )

    def query(self, images: torch.Tensor) -> list[Answer]:
        """The top-1 label for each image, from one infer request.

        Raises:
            ConfigError: ``images`` is not a uint8 N×C×H×W tensor.
            QueryError: the request failed or the answer is invalid.
        """
        batch = self._take(images)
        if batch is None:
            return []
        count = int(batch.shape[0])
        request_id = f"ownmark-{uuid.uuid4().hex}"
        body = {
            "id": request_id,
            "inputs": [
                {
                    "name": self._input_name,
                    "shape": list(batch.shape),
                    "datatype": "UINT8",
                    "data": batch.reshape(-1).tolist(),
                }
            ],
        }
        payload = self._transport.request("POST", self._infer_url, body=body)
        return parse_v2_response(payload, count, self._answer, request_id=request_id)


# ---------------------------------------------------------------------------------------------
# JSON templates

_TEMPLATE_FIELDS: Final = ("url", "method", "headers", "encoding", "body", "answers")
_IMAGES: Final = "$images"


@dataclass(frozen=True)
class _Template:
    url: str | None
    method: str
    headers: tuple[tuple[str, str], ...]
    encoding: str
    body: object
    answers: tuple[str, ...]


def _read_template(template: Mapping[str, Any] | str | os.PathLike[str]) -> _Template:
    """Parse and check a template; every problem is a ConfigError naming the field."""
    if isinstance(template, Mapping):
        raw: object = dict(template)
        source = "the template"
    else:
        path = Path(template)
        source = f"template {path}"
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise ConfigError(f"template file {path} does not exist") from exc
        except OSError as exc:
            raise ConfigError(f"cannot read template file {path} ({_reason(exc)})") from exc
        except json.JSONDecodeError as exc:
            raise ConfigError(
                f"template {path} is not valid JSON (line {exc.lineno}: {exc.msg})"
            ) from exc
        except (ValueError, RecursionError) as exc:
            raise ConfigError(f"template {path} is not valid JSON ({_one_line(exc)})") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{source} must be a JSON object")
    unknown = sorted(str(k) for k in raw if k not in _TEMPLATE_FIELDS)
    if unknown:
        raise ConfigError(
            f"{source} has unknown field {unknown[0]!r}; fields: {', '.join(_TEMPLATE_FIELDS)}"
        )

    def bad(field: str, why: str) -> ConfigError:
        return ConfigError(f"{source}: field {field!r} {why}")

    url = raw.get("url")
    if url is not None:
        if not isinstance(url, str):
            raise bad("url", "must be a URL string")
        _check_url(url, f"{source}: field 'url'")
    method = raw.get("method", "POST")
    if not isinstance(method, str) or method.upper() not in ("POST", "PUT"):
        raise bad("method", f"must be POST or PUT, got {method!r}")
    headers = raw.get("headers", {})
    if not isinstance(headers, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in headers.items()
    ):
        raise bad("headers", "must be an object of header names to text values")
    try:
        HttpPolicy(headers=tuple(headers.items()))  # reuse the header checks
    except ConfigError as exc:
        raise bad("headers", f"is invalid: {exc}") from exc
    encoding = raw.get("encoding", "nested")
    if encoding not in ENCODINGS:
        raise bad("encoding", f"must be one of {', '.join(ENCODINGS)}, got {encoding!r}")
    body = raw.get("body", {"instances": _IMAGES})
    try:
        json.dumps(body, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise bad("body", f"is not plain JSON ({_one_line(exc)})") from exc
    if not _mentions_images(body):
        raise bad("body", f'never mentions "{_IMAGES}", so the images would not be sent')
    answers = raw.get("answers", "predictions")
    if not isinstance(answers, str):
        raise bad("answers", "must be a dotted path such as 'predictions.*.label'")
    segments = tuple(answers.split(".")) if answers else ()
    if any(not s for s in segments):
        raise bad("answers", f"{answers!r} has an empty step; write e.g. 'predictions.*.label'")
    return _Template(url, method.upper(), tuple(headers.items()), encoding, body, segments)


def _encode_images(batch: npt.NDArray[np.uint8], encoding: str) -> object:
    if encoding == "nested":
        return batch.tolist()
    if encoding == "flat":
        return batch.reshape(-1).tolist()
    from PIL import Image  # only this encoding needs Pillow

    channels = batch.shape[1]
    if channels not in (1, 3, 4):
        raise ConfigError(
            f"png_base64 needs images with 1, 3 or 4 channels, got {channels}; "
            "use the nested or flat encoding"
        )
    encoded: list[str] = []
    for image in batch:
        # Pillow wants H×W (mode L) or H×W×C (RGB, RGBA).
        pixels = image[0] if channels == 1 else np.ascontiguousarray(image.transpose(1, 2, 0))
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="PNG")
        encoded.append(base64.b64encode(buffer.getvalue()).decode("ascii"))
    return encoded


def _mentions_images(body: object) -> bool:
    if body == _IMAGES:
        return True
    if isinstance(body, dict):
        return any(_mentions_images(value) for value in body.values())
    return isinstance(body, list) and any(_mentions_images(value) for value in body)


def _fill(body: object, images: object) -> object:
    """``body`` with every string "$images" replaced by the encoded batch."""
    if body == _IMAGES:
        return images
    if isinstance(body, dict):
        return {key: _fill(value, images) for key, value in body.items()}
    if isinstance(body, list):
        return [_fill(value, images) for value in body]
    return body


def _follow(value: object, segments: Sequence[str], done: str = "") -> object:
    """The value at a dotted path; ``*`` maps the rest of the path over a list."""
    for position, segment in enumerate(segments):
        here = f"{done}.{segment}" if done else segment
        if segment == "*":
            if not isinstance(value, list):
                raise QueryError(f"the answer's {done or 'top level'!r} is not a list")
            rest = segments[position + 1 :]
            return [
                _follow(item, rest, f"{done}.{i}" if done else str(i))
                for i, item in enumerate(value)
            ]
        if isinstance(value, dict) and segment in value:
            value = value[segment]
        elif isinstance(value, list) and segment.isascii() and segment.isdigit():
            if int(segment) >= len(value):
                raise QueryError(f"the answer has no {here!r} (the list has {len(value)} items)")
            value = value[int(segment)]
        else:
            raise QueryError(f"the answer has no {_one_line(here, 80)!r}")
        done = here
    return value


class TemplateSuspect(_HttpSuspect):
    """A suspect behind any JSON API, described by a template (a dict or a JSON file).

    Template fields (defaults in brackets):

    * ``url``: where to send the batch [required unless ``url`` is passed here];
    * ``method``: POST or PUT [POST];
    * ``headers``: extra headers, e.g. ``{"X-Api-Key": "..."}`` [none];
    * ``encoding``: how images are sent [nested]: ``nested`` (N×C×H×W lists of ints),
      ``flat`` (one row-major list) or ``png_base64`` (one base64 PNG per image: mode L for
      1 channel, RGB for 3, RGBA for 4);
    * ``body``: the JSON body; the string "$images" anywhere in it becomes the encoded batch
      [``{"instances": "$images"}``];
    * ``answers``: dotted path to the answers in the response; ``*`` maps over a list and a
      number indexes one, e.g. "labels", "predictions.*.label", "outputs.0.data"
      [predictions]. See :func:`normalize_answers` for what an answer may be.

    Args:
        template: the template, or the path of its JSON file.
        url: overrides the template's ``url`` (default None).
        policy, client, sleep, clock, seed: as for :class:`V2Suspect`.

    Raises:
        ConfigError: the template is invalid (the message names the field).
    """

    protocol = "template"

    def __init__(
        self,
        template: Mapping[str, Any] | str | os.PathLike[str],
        *,
        url: str | None = None,
        policy: HttpPolicy = _DEFAULT_POLICY,
        client: httpx.Client | None = None,
        sleep: Sleep = time.sleep,
        clock: Clock = time.monotonic,
        seed: int = 0,
    ) -> None:
        self._template = _read_template(template)
        if url is not None:
            _check_url(url, "suspect URL")
        target = url if url is not None else self._template.url
        if target is None:
            raise ConfigError("the template has no field 'url'; add it or give the URL")
        super().__init__(policy, client, sleep, clock, seed)
        self._url = target

    @property
    def address(self) -> str:
        return self._url

    def query(self, images: torch.Tensor) -> list[Answer]:
        """One label per image, from one request.

        Raises:
            ConfigError: ``images`` is not a uint8 N×C×H×W tensor.
            QueryError: the request failed or the answer is invalid.
        """
        batch = self._take(images)
        if batch is None:
            return []
        count = int(batch.shape[0])
        body = _fill(self._template.body, _encode_images(batch, self._template.encoding))
        payload = self._transport.request(
            self._template.method, self._url, body=body, headers=dict(self._template.headers)
        )
        return normalize_answers(_follow(payload, self._template.answers), count)


# ---------------------------------------------------------------------------------------------
# Python adapters


class CallableSuspect:
    """A suspect reached through a Python function (or anything :func:`load_adapter` returns).

    ``fn`` gets a uint8 N×C×H×W numpy array (a copy) and returns one answer per image:
    labels or rows of scores (see :func:`normalize_answers`). Its exceptions propagate; the
    verifier records them as errors.

    Args:
        fn: the adapter.
        address: how the suspect is named in results (default "python adapter").
    """

    protocol = "python"

    def __init__(self, fn: Adapter, address: str = "python adapter") -> None:
        if not callable(fn):
            raise ConfigError(f"the adapter must be callable, got {type(fn).__name__}")
        self._fn = fn
        self._address = address
        self.requests_sent = 0
        self.images_sent = 0
        self.retries_done = 0

    @property
    def address(self) -> str:
        return self._address

    def query(self, images: torch.Tensor) -> list[Answer]:
        batch = _image_batch(images)
        count = int(batch.shape[0])
        if count == 0:
            return []
        self.requests_sent += 1
        self.images_sent += count
        return normalize_answers(self._fn(batch), count)

    def close(self) -> None:
        """Nothing to release; here so every suspect can be closed alike."""

    def __enter__(self) -> CallableSuspect:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


def _import_file(path: Path) -> object:
    if not path.is_file():
        raise ConfigError(f"adapter file {path} does not exist")
    resolved = path.resolve()
    digest = hashlib.sha256(str(resolved).encode()).hexdigest()[:12]
    name = f"_ownmark_adapter_{digest}"
    spec = importlib.util.spec_from_file_location(name, resolved)
    if spec is None or spec.loader is None:
        raise ConfigError(f"adapter file {path} cannot be loaded as Python")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pickling look the module up by name
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[name]
        raise ConfigError(
            f"adapter file {path} failed to load: {type(exc).__name__}: {_one_line(exc)}"
        ) from exc
    return module


def _import_module(name: str) -> object:
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and name != exc.name and not name.startswith(exc.name + "."):
            raise ConfigError(
                f"adapter module {name!r} needs module {exc.name!r}, which is not installed"
            ) from exc
        raise ConfigError(
            f"cannot import adapter module {name!r}; check the spec or install the package"
        ) from exc
    except Exception as exc:
        raise ConfigError(
            f"adapter module {name!r} failed to load: {type(exc).__name__}: {_one_line(exc)}"
        ) from exc


def _required_arguments(fn: Callable[..., object]) -> int | None:
    """How many arguments ``fn`` requires, or None when Python cannot tell (builtins)."""
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):
        return None
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return sum(
        p.kind in kinds and p.default is inspect.Parameter.empty
        for p in signature.parameters.values()
    )


def _as_adapter(obj: object, spec: str, made: bool) -> Adapter:
    query: object = getattr(obj, "query", None)
    if callable(query):
        return query
    if callable(obj):
        return obj
    what = f"returned a {type(obj).__name__}" if made else f"is a {type(obj).__name__}"
    raise ConfigError(f"adapter {spec!r} {what}, not a callable or an object with .query()")


def load_adapter(spec: str) -> Adapter:
    """Load a Python adapter from "package.module:attr" or "path/to/file.py:attr".

    ``attr`` may be dotted ("module:Class.method") and names one of:

    * a function taking the images (see :class:`CallableSuspect`): used as is;
    * an object with a ``.query(images)`` method: its ``.query`` is used;
    * a class, or a factory function taking no arguments: it is called once and its
      result (an object with ``.query``, or a callable) is used.

    A function is taken as a factory exactly when it requires no arguments.

    Raises:
        ConfigError: the spec is malformed, or the module, file or attribute is missing, or
            what it names cannot answer queries.
    """
    where, colon, attr = spec.rpartition(":")
    if not colon or not where or not attr:
        raise ConfigError(
            f"adapter spec {spec!r} must be 'package.module:attr' or 'path/to/file.py:attr'"
        )
    is_file = where.endswith(".py") or "/" in where or os.sep in where
    module = _import_file(Path(where)) if is_file else _import_module(where)
    obj: object = module
    for part in attr.split("."):
        if not part.isidentifier() or not hasattr(obj, part):
            raise ConfigError(f"adapter {where!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    made = False
    if inspect.isclass(obj) or (inspect.isroutine(obj) and _required_arguments(obj) == 0):
        made = True
        try:
            obj = obj()
        except Exception as exc:
            raise ConfigError(
                f"cannot create the adapter {spec!r} without arguments: "
                f"{type(exc).__name__}: {_one_line(exc)}"
            ) from exc
    return _as_adapter(obj, spec, made)


# ---------------------------------------------------------------------------------------------
# registry


def open_suspect(
    target: str,
    protocol: str = "v2",
    *,
    model: str | None = None,
    policy: HttpPolicy = _DEFAULT_POLICY,
    answer: str = "auto",
    template: str | None = None,
    seed: int = 0,
    input_name: str = "images",
) -> Suspect:
    """Open a remote suspect by protocol, one of :data:`PROTOCOLS` (default "v2").

    * "v2": ``target`` is the URL (see :class:`V2Suspect`); ``model``, ``answer`` and
      ``input_name`` apply.
    * "template": ``target`` is the URL (may be "" when the template has one) and
      ``template`` the template file.
    * "python": ``target`` is the adapter spec (see :func:`load_adapter`).

    The caller closes the suspect (every one has ``.close()``).

    Raises:
        ConfigError: unknown protocol, or an option that does not apply to it.
    """
    if protocol not in PROTOCOLS:
        raise ConfigError(f"unknown protocol {protocol!r}; choose one of {', '.join(PROTOCOLS)}")
    if protocol != "v2":
        if model is not None:
            raise ConfigError(f"a model name applies only to the v2 protocol, not {protocol}")
        if answer != "auto":
            raise ConfigError(f"--answer applies only to the v2 protocol, not {protocol}")
    if protocol != "template" and template is not None:
        raise ConfigError(f"a template applies only to the template protocol, not {protocol}")
    if protocol == "v2":
        return V2Suspect(
            target, model, policy=policy, answer=answer, seed=seed, input_name=input_name
        )
    if protocol == "template":
        if template is None:
            raise ConfigError("the template protocol needs a template file (--template FILE)")
        return TemplateSuspect(template, url=target or None, policy=policy, seed=seed)
    return CallableSuspect(load_adapter(target), address=f"python:{target}")
