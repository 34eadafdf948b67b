"""How verification talks to a suspect: a black box from images to labels.

Verification never sees weights. A suspect is anything with ``query(images) -> answers``:
a model in this process (:class:`LocalModelSuspect`), an HTTP prediction API or a user's
adapter (:mod:`ownmark.verify.remote`). Answers are whatever came back; the verifier
validates them, so a suspect that returns garbage, raises, or times out can never produce a
match.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
from torch import nn

from ownmark.metrics import logits


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
        return labels_from_scores(logits(self._model, images)) if len(images) else []

    def close(self) -> None:
        """Nothing to release; here so that every suspect ownmark opens can be closed."""
