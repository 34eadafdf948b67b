"""The HTTP transport the HTTP suspects share, and the error every remote suspect raises.

:class:`_Transport` sends one JSON request at a time and applies :class:`HttpPolicy`: retries
of transient failures (connection errors, timeouts, 429, 5xx) with seeded, jittered
exponential backoff, ``Retry-After`` (capped), a rate limit, a time budget for the whole run,
a deadline per request (:mod:`ownmark.verify.remote.deadline`), a cap on the bytes read from
an answer (compressed or not), and no redirects. Every failure becomes a :class:`QueryError`
with a one-line cause, which is why :class:`QueryError` and :func:`_one_line` live here.
"""

from __future__ import annotations

import email.utils
import json
import random
import re
import time
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Final
from urllib.parse import urljoin, urlsplit

import httpx

from ownmark import __version__
from ownmark.errors import ConfigError, OwnmarkError
from ownmark.verify.remote.deadline import _Deadline, _DeadlineTransport
from ownmark.verify.remote.policy import _MIB, HttpPolicy
from ownmark.verify.suspects import SuspectUnreachable

__all__ = ["Clock", "QueryError", "Sleep", "json_bytes"]

_MESSAGE_CHARS = 200  # server text quoted in an error message is cut to this length
_RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
#: How much of an error answer (4xx, 5xx) is read: enough for its message, never more.
_ERROR_BODY_BYTES: Final = 64 * 1024
#: Slack when telling "the deadline cut the request" from "the server went quiet".
_DEADLINE_SLACK_S: Final = 0.05

Sleep = Callable[[float], None]
Clock = Callable[[], float]


class QueryError(OwnmarkError):
    """A query that failed for good (after any retries); the message names the cause."""


def _one_line(text: object, limit: int = _MESSAGE_CHARS) -> str:
    """``text`` as one line of at most ``limit`` characters, safe to put in a message."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def _size(n: int) -> str:
    """A byte count for messages: "8 MiB", "64 KiB", "100 bytes"."""
    if n >= _MIB and n % _MIB == 0:
        return f"{n // _MIB} MiB"
    if n >= 1024 and n % 1024 == 0:
        return f"{n // 1024} KiB"
    return f"{n} bytes"


class UnreachableError(QueryError, SuspectUnreachable):
    """No attempt ever reached the server (see :class:`~ownmark.verify.SuspectUnreachable`)."""


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
    unreachable: bool = False  # the connection itself could not be made

    def message(self, retries: int) -> str:
        text = self.cause
        if retries:
            text += f" after {retries} {'retry' if retries == 1 else 'retries'}"
        if self.detail:
            text += f": {self.detail}"
        return f"{text}; {self.hint}" if self.hint else text


@dataclass(frozen=True)
class _Answer:
    """The body of a successful attempt."""

    payload: bytes


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
        #: whether any response (of any status) ever came back
        self.reached = False
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
        content: bytes | None = None,
        content_type: str = "application/json",
        headers: Mapping[str, str] | None = None,
        raw: bool = False,
    ) -> object:
        """Send a request and return the answer's decoded JSON (its bytes with ``raw``).

        ``body`` is sent as compact JSON (:func:`json_bytes`); ``content`` is sent as it is,
        with ``content_type``, so that a caller that records the bytes sends exactly those.

        Raises:
            QueryError: the request failed for good, the answer is not JSON (unless ``raw``)
                or too large, or the time budget is spent.
        """
        send_headers = self._headers(headers or {})
        if body is not None:
            content = json_bytes(body)
        if content is not None:
            send_headers["Content-Type"] = content_type
        attempt = 0
        while True:
            self._check_budget()
            self._pace()
            self.requests_sent += 1
            outcome = self._attempt(method, url, content, send_headers)
            if isinstance(outcome, _Answer):
                return outcome.payload if raw else _decode_json(outcome.payload, url)
            if not outcome.retry or attempt >= self.policy.retries:
                if outcome.unreachable and not self.reached:
                    raise UnreachableError(outcome.message(attempt))
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
                unreachable=True,
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
        self.reached = True
        status = response.status_code
        if 300 <= status < 400:
            return _redirect_failure(response, url)
        if response.is_success:
            limit = self.policy.max_response_bytes
            return _Answer(_read_body(response, url, limit, expires))
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


def json_bytes(body: object) -> bytes:
    """``body`` as the compact JSON bytes every JSON request sends (and evidence re-derives)."""
    return json.dumps(body, separators=(",", ":"), allow_nan=False).encode()


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
