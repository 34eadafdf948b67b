"""The server's settings: :class:`ServeConfig` and :data:`ANSWER_MODES`.

Every limit the API enforces (batch size, body size and time, head time, requests in flight,
connections) and what it answers are one field here, checked when the config is made; the
app (:mod:`ownmark.serve.app`) and the server runner (:mod:`ownmark.serve.background`) read
them from it.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from ownmark.errors import ConfigError

__all__ = ["ANSWER_MODES", "ServeConfig"]

ANSWER_MODES = ("label", "topk", "probabilities")
"""What the server answers: top-1 labels, labels plus the k best classes with their scores, or
the full probability vector (without labels, like a typical probability API)."""
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
_TOKEN_RE = re.compile(r"^[\x21-\x7e]+$")  # visible ASCII: it travels in an HTTP header


@dataclass(frozen=True)
class ServeConfig:
    """How the server answers.

    Attributes:
        model_name: the model's name in the URL (``/v2/models/{model_name}``); default
            ``"model"``. Letters, digits, ``_``, ``.`` and ``-``.
        answer: one of :data:`ANSWER_MODES`; default ``"label"``.
        top_k: classes returned by the ``"topk"`` answer (capped at the number of classes);
            default 5.
        max_batch: most images per request; more gives 413. Default 256.
        max_body_bytes: largest request body; more gives 413. Default 16 MiB.
        token: if set, the ``/v2/models/...`` routes need ``Authorization: Bearer <token>``;
            default ``None`` (open).
        access_log: path of a JSON-lines access-log file (appended to); default ``None``
            sends the lines to the ``ownmark.access`` logger instead.
        max_concurrency: most inference requests computed at once; more get 503 with
            ``Retry-After: 1``. Default 8: the forward passes share the CPU (the torch backend
            runs one at a time), so more in flight only lengthens every answer and holds more
            decoded batches in memory. A request counts from when its body has arrived.
        body_timeout: seconds a request body may take to arrive, from the end of its head
            (default 10.0); a slower one gets 408 and its connection is closed. 16 MiB takes
            well under a second on any real link; a client sending a byte at a time would
            otherwise hold its connection and buffers as long as it liked.
        header_timeout: seconds a connection may take to send a complete request head, from
            when it opens or its previous answer was sent (default 10.0); a slower one is
            closed. uvicorn has no such limit of its own: a client trickling headers would
            hold its connection forever.
        max_connections: most open connections (uvicorn's ``limit_concurrency``); a request
            arriving beyond gets 503 (default 256). It bounds the file descriptors and the
            memory abusive clients can take: each connection buffers at most
            ``max_body_bytes``, for at most ``body_timeout``.

    Raises:
        ConfigError: a value is out of range.
    """

    model_name: str = "model"
    answer: str = "label"
    top_k: int = 5
    max_batch: int = 256
    max_body_bytes: int = 16 * 2**20
    token: str | None = None
    access_log: str | None = None
    max_concurrency: int = 8
    body_timeout: float = 10.0
    header_timeout: float = 10.0
    max_connections: int = 256

    def __post_init__(self) -> None:
        if not isinstance(self.model_name, str) or not _NAME_RE.match(self.model_name):
            raise ConfigError(
                f"invalid model name {self.model_name!r}: use 1-100 letters, digits, '_', '.' "
                "or '-', starting with a letter or digit"
            )
        if self.answer not in ANSWER_MODES:
            raise ConfigError(
                f"unknown answer mode {self.answer!r}; choose one of: {', '.join(ANSWER_MODES)}"
            )
        for field, value in (
            ("top_k", self.top_k),
            ("max_batch", self.max_batch),
            ("max_body_bytes", self.max_body_bytes),
            ("max_concurrency", self.max_concurrency),
            ("max_connections", self.max_connections),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{field} must be a positive integer, got {value!r}")
        for field, seconds in (
            ("body_timeout", self.body_timeout),
            ("header_timeout", self.header_timeout),
        ):
            if (
                isinstance(seconds, bool)
                or not isinstance(seconds, int | float)
                or not math.isfinite(seconds)
                or seconds <= 0
            ):
                raise ConfigError(f"{field} must be a positive number of seconds, got {seconds!r}")
        if self.token is not None and (
            not isinstance(self.token, str) or not _TOKEN_RE.match(self.token)
        ):
            raise ConfigError(
                "the API token must be non-empty printable ASCII without spaces; "
                "generate one with: python -c 'import secrets; print(secrets.token_urlsafe())'"
            )
        if self.access_log is not None and (
            not isinstance(self.access_log, str) or not self.access_log
        ):
            raise ConfigError(f"access_log must be a file path or None, got {self.access_log!r}")
