"""What the HTTP suspects (:class:`V2Suspect`, :class:`TemplateSuspect`) share.

:class:`_HttpSuspect` owns the transport, counts requests, retries and images, and closes
the connections; :func:`_check_url` checks the addresses they are given.
"""

from __future__ import annotations

from types import TracebackType
from typing import TypeVar
from urllib.parse import urlsplit

import httpx
import numpy as np
import numpy.typing as npt
import torch

from ownmark.errors import ConfigError
from ownmark.verify.remote.answers import _image_batch
from ownmark.verify.remote.policy import HttpPolicy
from ownmark.verify.remote.transport import Clock, Sleep, _Transport

_S = TypeVar("_S", bound="_HttpSuspect")


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
