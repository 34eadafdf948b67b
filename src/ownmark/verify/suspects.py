"""How verification talks to a suspect: a black box from images to labels.

Verification never sees weights. A suspect is anything with ``query(images) -> answers``:
a model in this process (:class:`LocalModelSuspect`), an HTTP prediction API or a user's
adapter (:mod:`ownmark.verify.protocols`). Answers are whatever came back; the verifier
validates them, so a suspect that returns garbage, raises, or times out can never produce a
match.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import torch
from torch import nn

from ownmark.metrics import predict


@runtime_checkable
class Suspect(Protocol):
    """A black-box classifier: uint8 images (N×C×H×W) in, one answer per image out."""

    @property
    def address(self) -> str:
        """Where the suspect lives (a URL, or a description for a local model)."""
        ...

    def query(self, images: torch.Tensor) -> Sequence[object]:
        """Top-1 labels (ints) for ``images``; may raise on errors."""
        ...


class LocalModelSuspect:
    """A model in this process, seen only through its top-1 labels."""

    protocol = "local"

    def __init__(self, model: nn.Module, address: str = "local model") -> None:
        self._model = model
        self._address = address

    @property
    def address(self) -> str:
        return self._address

    def query(self, images: torch.Tensor) -> Sequence[object]:
        return [int(v) for v in predict(self._model, images)]

    def close(self) -> None:
        """Nothing to release; here so that every suspect ownmark opens can be closed."""
