"""Free-form answers turned into labels, or into :class:`InvalidAnswer` where they name none.

A label answer is taken as it is (out-of-range labels are the verifier's to refuse). Scores
are different: the label they name is their argmax, and an argmax over scores that tie for
the top, or that are NaN or infinite, picks the first index, so a broken or uniform model
would read as a confident "class 0". Such a row gives an InvalidAnswer for its image (which
the verifier records as a failed query), while the other images of the batch keep theirs.

Shared by every suspect: :func:`normalize_answers` for templates and Python adapters, the
label and score helpers for the v2 parser (:mod:`ownmark.verify.remote.v2`), and
:func:`_image_batch`, the one check of the batch every suspect sends (what goes in, beside
what comes out).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import numpy.typing as npt
import torch

from ownmark.errors import ConfigError
from ownmark.verify.remote.transport import QueryError, _one_line
from ownmark.verify.suspects import InvalidAnswer, labels_from_scores

__all__ = ["Answer", "label_from_name", "normalize_answers"]

_INTEGER_TEXT = re.compile(r"[+-]?[0-9]+")

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


def label_from_name(name: str, labels: Mapping[str, int] | None) -> Answer:
    """The class a label name stands for: looked up in ``labels`` (names -> indices), else an
    integer written as text; any other name is an :class:`InvalidAnswer` (never a match)."""
    if labels is not None and name in labels:
        return labels[name]
    if _INTEGER_TEXT.fullmatch(name.strip()):
        return int(name)
    if labels is None:
        return InvalidAnswer(
            f"the answer names {_one_line(repr(name), 40)}, not a class index; pass --labels FILE"
        )
    return InvalidAnswer(
        f"the answer names {_one_line(repr(name), 40)}, which is not a known label"
    )


def _answer_to_label(value: object, where: str, labels: Mapping[str, int] | None = None) -> Answer:
    """A label from one free-form answer: an integer, an integer string, or a row of scores;
    with ``labels``, also a label name."""
    if isinstance(value, np.ndarray | torch.Tensor):
        value = value.tolist()
    if isinstance(value, str) and labels is not None:
        return label_from_name(value, labels)
    if isinstance(value, str) and _INTEGER_TEXT.fullmatch(value.strip()):
        return int(value)
    if isinstance(value, list | tuple):
        # One score says nothing about which class wins, so it is refused rather than argmax'd.
        if len(value) < 2:
            raise QueryError(f"{where} is a list of {len(value)} values; expected 2 or more scores")
        return _top_labels([value], lambda _: where)[0]
    return _as_label(value, where)


def normalize_answers(
    answers: object, count: int, labels: Mapping[str, int] | None = None
) -> list[Answer]:
    """Validate free-form answers (from a template or a Python adapter) into ``count`` labels.

    Each answer may be an integer label (ints, integer-valued floats, numpy scalars, or a
    string of digits) or a row of at least two scores, taken as its argmax. A numpy array or
    tensor is first turned into lists. A row of scores that ties for the top or holds NaN or
    ±inf (``Infinity`` in JSON, or a number too large for a float) names no class: that
    image's answer is an :class:`~ownmark.verify.suspects.InvalidAnswer`. With ``labels``
    (name -> index, default None) an answer may also be a label name; a name not among them
    is an InvalidAnswer too.

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
    return [_answer_to_label(value, f"answer {i}", labels) for i, value in enumerate(answers)]


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
