"""What the HTTP suspects (:class:`V2Suspect`, :class:`TemplateSuspect`) share.

:class:`_HttpSuspect` owns the transport, counts requests, retries, images and errors,
records the digest of every body sent, and closes the connections; :func:`_check_url` checks
the addresses they are given.
"""

from __future__ import annotations

import hashlib
import re
from types import TracebackType
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit

import httpx
import numpy as np
import numpy.typing as npt
import torch

from ownmark.errors import ConfigError
from ownmark.verify.remote.answers import Answer, _image_batch
from ownmark.verify.remote.encoding import InputEncoding, WireFormat
from ownmark.verify.remote.policy import HttpPolicy
from ownmark.verify.remote.transport import Clock, Sleep, _Transport
from ownmark.verify.suspects import InputSpec, SentBody, SuspectCounters

_S = TypeVar("_S", bound="_HttpSuspect")


class _HttpSuspect:
    """What the HTTP suspects share: the transport, the counters, what was sent, closing.

    Subclasses set ``protocol``, implement :meth:`_answer` (one query's validated uint8
    batch to its answers) and :meth:`options`, and call :meth:`_send` for each body so that
    it is recorded.
    """

    protocol = ""

    def __init__(
        self,
        policy: HttpPolicy,
        client: httpx.Client | None,
        sleep: Sleep,
        clock: Clock,
        seed: int,
        encoding: InputEncoding | None = None,
    ) -> None:
        self._transport = _Transport(policy, client=client, sleep=sleep, clock=clock, seed=seed)
        self._images_sent = 0
        self._errors = 0
        self._sent: list[SentBody] = []
        self._encoding = encoding

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

    @property
    def counters(self) -> SuspectCounters:
        return SuspectCounters(
            requests_sent=self.requests_sent,
            images_sent=self._images_sent,
            retries_done=self.retries_done,
            errors=self._errors,
        )

    @property
    def input_spec(self) -> InputSpec:
        return InputSpec(None if self._encoding is None else self._encoding.to_dict())

    def options(self) -> dict[str, Any]:
        """Every option that shapes the requests (recorded in the evidence)."""
        return {}

    def check_input(self, image_shape: tuple[int, int, int]) -> None:
        """Check what can be checked before a key image is sent (default: the encoding fits
        the images; a v2 suspect also reads the model's metadata)."""
        if self._encoding is not None:
            self._encoding.image_shape(image_shape)

    def take_sent(self) -> list[SentBody]:
        sent, self._sent = self._sent, []
        return sent

    def _record(self, content: bytes, request_id: str | None = None) -> None:
        self._sent.append(SentBody(hashlib.sha256(content).hexdigest(), request_id))

    def query(self, images: torch.Tensor) -> list[Answer]:
        """One answer per image (a label or an InvalidAnswer).

        Raises:
            ConfigError: ``images`` is not a uint8 N×C×H×W tensor.
            QueryError: a request failed or an answer is invalid.
        """
        batch = _image_batch(images)
        if int(batch.shape[0]) == 0:
            return []
        self._images_sent += int(batch.shape[0])
        try:
            return self._answer(batch)
        except Exception:
            self._errors += 1
            raise

    def _answer(self, batch: npt.NDArray[np.uint8]) -> list[Answer]:
        raise NotImplementedError

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


def _chunks(count: int, max_batch: int | None) -> list[tuple[int, int]]:
    """(start, stop) of each request when ``count`` images go out ``max_batch`` at a time."""
    step = count if max_batch is None else max_batch
    return [(start, min(start + step, count)) for start in range(0, count, max(step, 1))]


def _check_url(url: object, what: str) -> str:
    if not isinstance(url, str):
        raise ConfigError(f"{what} must be a URL string, got {type(url).__name__}")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(f"{what} {url!r} must start with http:// or https:// and name a host")
    return url


def _check_wire(wire: object) -> WireFormat:
    """``wire``, or the default :class:`WireFormat` for None; anything else is refused."""
    if wire is None:
        return WireFormat()
    if not isinstance(wire, WireFormat):
        raise ConfigError(f"wire must be a WireFormat, got {type(wire).__name__}")
    return wire


def _model_from_url(
    url: str, model: str | None, pattern: re.Pattern[str], suffix: str
) -> tuple[str, str, str | None]:
    """``(base, model name, version)`` of a URL matching ``pattern`` (groups prefix, name,
    version), or of any URL plus the model name given; ``base`` is scheme, host and the path
    before the protocol's part. ``suffix`` names the expected form (``/v2/models/NAME``) in
    the message when neither names a model."""
    parts = urlsplit(url)
    if parts.query or parts.fragment:
        raise ConfigError(f"suspect URL {url!r} must not have a query (?...) or fragment (#...)")
    path = parts.path.rstrip("/")
    origin = f"{parts.scheme}://{parts.netloc}"
    match = pattern.fullmatch(path)
    if match is not None:
        name = unquote(match["name"])
        if model is not None and model != name:
            raise ConfigError(f"the URL names model {name!r} but the model given is {model!r}")
        version = unquote(match["version"]) if match["version"] else None
        return origin + match["prefix"], name, version
    if model is None:
        raise ConfigError(
            f"suspect URL {url!r} does not name a model; give the model name "
            f"(--model-name NAME) or a URL ending in {suffix}"
        )
    return origin + path, model, None
