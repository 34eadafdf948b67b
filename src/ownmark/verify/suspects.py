"""How verification talks to a suspect: a black box from images to labels.

Verification never sees weights. A suspect is anything with ``query(images) -> answers``:
a model in this process (:class:`LocalModelSuspect`), an HTTP prediction API or a user's
adapter (:mod:`ownmark.verify.remote`). Answers are whatever came back; the verifier
validates them, so a suspect that returns garbage, raises, or times out can never produce a
match.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

from ownmark.errors import ConfigError, OwnmarkError
from ownmark.metrics import logits


class SuspectUnreachable(OwnmarkError):
    """The suspect could not be reached at all: no answer of any kind ever came back.

    Raised by a suspect's ``query`` when it has never had a response (a refused connection,
    an unknown host). The verifier lets it through when nothing was answered yet, so a
    mistyped address fails at once with this message instead of a run of failed queries
    ending "inconclusive".
    """


@dataclass(frozen=True)
class InvalidAnswer:
    """Stands in for the label of one image whose answer was unusable.

    A suspect returns it in place of a label when that image's answer cannot name one class:
    scores that tie for the top, NaN or infinite scores, a malformed entry. The verifier
    records it as a failed query, so it can never count as a match (a broken model whose
    argmax falls on class 0 for every input must not "match" a key label 0).
    """

    reason: str

    def __repr__(self) -> str:
        return f"invalid answer ({self.reason})"


def labels_from_scores(scores: torch.Tensor) -> list[int | InvalidAnswer]:
    """Top-1 label of each row of ``scores`` (N×K), or :class:`InvalidAnswer` where there is none.

    A row with a NaN or infinite score, or whose highest score is shared by two classes,
    names no class: ``argmax`` would pick the first index, so a uniform or broken output
    would look like a confident "class 0".
    """
    if scores.ndim != 2 or scores.shape[1] < 2:
        raise ValueError(f"scores must be N×K with K >= 2, got shape {tuple(scores.shape)}")
    scores = scores.detach().double().cpu()
    finite = torch.isfinite(scores).all(dim=1)
    top2 = scores.nan_to_num(0.0, 0.0, 0.0).topk(2, dim=1).values
    tied = top2[:, 0] == top2[:, 1]
    labels = scores.nan_to_num(0.0, 0.0, 0.0).argmax(dim=1)
    out: list[int | InvalidAnswer] = []
    for row in range(len(scores)):
        if not bool(finite[row]):
            out.append(InvalidAnswer("non-finite scores"))
        elif bool(tied[row]):
            out.append(InvalidAnswer("the top score is tied between classes"))
        else:
            out.append(int(labels[row]))
    return out


@dataclass(frozen=True)
class SuspectCounters:
    """What a suspect's client counted over its life.

    Attributes:
        requests_sent: requests made: HTTP requests incl. retries and metadata for an API,
            calls for a local model or an adapter (default 0).
        images_sent: images passed to ``query`` (each counted once, however many retries).
        retries_done: requests that were retries of a failed one.
        errors: ``query`` calls that raised (the verifier records their images as failed).
    """

    requests_sent: int = 0
    images_sent: int = 0
    retries_done: int = 0
    errors: int = 0


@dataclass(frozen=True)
class SentBody:
    """One request body a suspect sent: its SHA-256 and, where the protocol has one, its id.

    The evidence records these per request, so that ``evidence check`` can rebuild the bytes
    from the key images and the recorded options and compare.
    """

    sha256: str
    id: str | None = None

    def to_dict(self) -> dict[str, str]:
        return (
            {"sha256": self.sha256} if self.id is None else {"sha256": self.sha256, "id": self.id}
        )


@dataclass(frozen=True)
class InputSpec:
    """What a suspect takes on the wire, for messages and the evidence.

    ``encoding`` is an :class:`~ownmark.verify.remote.encoding.InputEncoding` as a dict
    (datatype, scale, mean, std, layout, shape), or None where the suspect takes the uint8
    images as they are (a local model, an adapter that encodes them itself).
    """

    encoding: dict[str, Any] | None = None


@runtime_checkable
class Suspect(Protocol):
    """A black-box classifier: uint8 images (N×C×H×W) in, one answer per image out.

    Everything the verifier and the CLI need from one, so that none of it is looked up with
    ``hasattr``. :class:`SuspectBase` gives the defaults of a suspect with no wire.
    """

    @property
    def address(self) -> str:
        """Where the suspect lives (a URL, or a description for a local model)."""
        ...

    @property
    def protocol(self) -> str:
        """How it is reached: "local", "v2", "template", "torchserve", "python", ..."""
        ...

    @property
    def input_spec(self) -> InputSpec:
        """What it takes on the wire."""
        ...

    @property
    def counters(self) -> SuspectCounters:
        """Requests, images, retries and errors so far."""
        ...

    def options(self) -> dict[str, Any]:
        """Every option that shapes the requests (JSON-able; recorded in the evidence)."""
        ...

    def check_input(self, image_shape: tuple[int, int, int]) -> None:
        """Check, before any key image is sent, that the suspect takes images of this shape
        (C, H, W); raises ConfigError (or QueryError) if not."""
        ...

    def query(self, images: torch.Tensor) -> Sequence[object]:
        """Top-1 labels (ints) for ``images``; may raise on errors."""
        ...

    def take_sent(self) -> list[SentBody]:
        """The request bodies sent since the last call, in order (none for local models)."""
        ...

    def close(self) -> None:
        """Release connections (a no-op where there are none)."""
        ...


@runtime_checkable
class QueryOnly(Protocol):
    """The least a black box needs: an address and ``query`` (see :func:`as_suspect`)."""

    @property
    def address(self) -> str: ...

    def query(self, images: torch.Tensor) -> Sequence[object]: ...


@runtime_checkable
class _Named(Protocol):
    protocol: str


class SuspectBase:
    """Defaults for a suspect without a wire: no options, nothing sent to record, nothing to
    close or check. Subclasses implement :meth:`_answer` and set ``protocol``; :meth:`query`
    counts calls, images and errors."""

    protocol = "local"

    def __init__(self, address: str) -> None:
        self._address = address
        self._counted = SuspectCounters()

    @property
    def address(self) -> str:
        return self._address

    @property
    def input_spec(self) -> InputSpec:
        return InputSpec()

    @property
    def counters(self) -> SuspectCounters:
        return self._counted

    def options(self) -> dict[str, Any]:
        return {}

    def check_input(self, image_shape: tuple[int, int, int]) -> None:
        """Nothing to check by default."""

    def take_sent(self) -> list[SentBody]:
        return []

    def close(self) -> None:
        """Nothing to release."""

    def query(self, images: torch.Tensor) -> Sequence[object]:
        counted = self._counted
        try:
            answers = self._answer(images)
        except Exception:
            self._counted = replace(
                counted, requests_sent=counted.requests_sent + 1, errors=counted.errors + 1
            )
            raise
        self._counted = replace(
            counted,
            requests_sent=counted.requests_sent + 1,
            images_sent=counted.images_sent + len(images),
        )
        return answers

    def _answer(self, images: torch.Tensor) -> Sequence[object]:
        raise NotImplementedError


class _Bare(SuspectBase):
    """A query-only object given the defaults of :class:`SuspectBase`."""

    def __init__(self, inner: QueryOnly) -> None:
        super().__init__(str(inner.address))
        self._inner = inner
        described: object = inner
        named = isinstance(described, _Named) and isinstance(described.protocol, str)
        self.protocol = described.protocol if isinstance(described, _Named) and named else "python"

    def _answer(self, images: torch.Tensor) -> Sequence[object]:
        return self._inner.query(images)


def as_suspect(suspect: Suspect | QueryOnly) -> Suspect:
    """``suspect`` itself if it is a complete :class:`Suspect`, else wrapped in the defaults
    (so a test double or a user's object with just ``address`` and ``query`` still works).

    Raises:
        ConfigError: it has no ``query`` method or ``address``.
    """
    if isinstance(suspect, Suspect):
        return suspect
    if isinstance(suspect, QueryOnly):
        return _Bare(suspect)
    raise ConfigError(
        f"a suspect needs an address and a query(images) method; got {type(suspect).__name__}"
    )


class LocalModelSuspect(SuspectBase):
    """A model in this process, seen only through its top-1 labels."""

    protocol = "local"

    def __init__(self, model: nn.Module, address: str = "local model") -> None:
        super().__init__(address)
        self._model = model

    def _answer(self, images: torch.Tensor) -> Sequence[object]:
        return labels_from_scores(logits(self._model, images)) if len(images) else []
