"""What evasion attacks put in front of a stolen model: an API that transforms or refuses.

A :class:`DefendedSuspect` keeps the model's weights and answers through the same
:class:`~ownmark.verify.suspects.Suspect` interface the verifier uses. Two things may happen
to a query before the answer goes out:

- :meth:`~DefendedSuspect.transform`: the image the model sees (JPEG, blur...; default the
  image itself);
- :meth:`~DefendedSuspect.flags`: the queries the API suspects are key queries (STRIP,
  MagNet...; default none). A flagged query is *refused* by answering the model's runner-up
  class: an answer that looks normal and is right about as often as a random wrong label is
  not, so the owner cannot tell a refusal from an ordinary mistake (the issue's requirement:
  "a detector answers the runner-up class, not a random one").

:func:`refusal_rate` measures the price the API pays: the fraction of normal queries it
flags. A defence that refuses more than :data:`MAX_REFUSAL_RATE` of normal queries is
reported but does not count as a successful evasion (it would be noticed by its users).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ownmark.metrics import logits
from ownmark.verify.suspects import SuspectBase, labels_from_scores

#: The most normal queries a defence may refuse and still count as an evasion (1%).
MAX_REFUSAL_RATE = 0.01


def runner_up_where(scores: torch.Tensor, flagged: torch.Tensor) -> torch.Tensor:
    """``scores`` (N×K) with the best and second-best score swapped in the ``flagged`` rows."""
    swapped = scores.clone()
    rows = flagged.nonzero().flatten()
    if len(rows):
        top2 = scores[rows].topk(2, dim=1)
        swapped[rows, top2.indices[:, 0]] = top2.values[:, 1]
        swapped[rows, top2.indices[:, 1]] = top2.values[:, 0]
    return swapped


class DefendedSuspect(SuspectBase):
    """A model behind an API that may transform every query and refuse flagged ones.

    Subclasses override :meth:`transform` and/or :meth:`flags`; ``refused`` counts the
    queries answered with the runner-up class so far.
    """

    protocol = "local"

    def __init__(self, model: nn.Module, address: str) -> None:
        super().__init__(address)
        self.model = model
        self.refused = 0

    def transform(self, images: torch.Tensor) -> torch.Tensor:
        """What the model sees for uint8 ``images`` (N×C×H×W); default: the images."""
        return images

    def flags(self, images: torch.Tensor) -> torch.Tensor:
        """Which of uint8 ``images`` the API takes for key queries (bool, N); default: none."""
        return torch.zeros(len(images), dtype=torch.bool)

    def options(self) -> dict[str, Any]:
        return {}

    @property
    def answer_classes(self) -> int | None:
        """How many classes the API answers among; None: the model's outputs, all of them."""
        return None

    def scores(self, images: torch.Tensor) -> torch.Tensor:
        """The scores behind the answers: flagged rows have their top two swapped."""
        raw = logits(self.model, self.transform(images))
        flagged = self.flags(images)
        self.refused += int(flagged.sum())
        return runner_up_where(raw, flagged)

    def _answer(self, images: torch.Tensor) -> Sequence[object]:
        if not len(images):
            return []
        return labels_from_scores(self.scores(images))


def refusal_rate(suspect: object, images: torch.Tensor) -> float | None:
    """Fraction of ``images`` (normal queries) a defended suspect refuses; None for others."""
    if not isinstance(suspect, DefendedSuspect) or not len(images):
        return None
    return float(suspect.flags(images).float().mean())
