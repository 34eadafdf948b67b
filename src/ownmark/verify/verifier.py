"""Black-box ownership verification: query the suspect with the key, test the matches.

Zhang et al. 2018 verify remotely by sending key images to the suspect's API and comparing
the answers with the key labels. We turn the match count into an exact one-sided binomial
p-value against H0 "independent model" (see :mod:`ownmark.verify.stats`).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from typing import Any

import torch

from ownmark.errors import ConfigError
from ownmark.keys import KeySet
from ownmark.verify.stats import BinomialTest, Verdict
from ownmark.verify.suspects import Suspect


@dataclass(frozen=True)
class QueryRecord:
    """One key query: which key sample, the image's hash, the answer, and the outcome."""

    index: int
    image_sha256: str
    answer: Any
    matched: bool
    error: str | None = None


@dataclass(frozen=True)
class VerificationResult:
    """Everything a verification measured and decided."""

    verdict: Verdict
    p_value: float
    matches: int
    queries: int
    errors: int
    p0: float
    alpha: float
    key_commitment: str
    suspect: str
    records: list[QueryRecord] = field(default_factory=list)

    @property
    def watermark_accuracy(self) -> float:
        return self.matches / self.queries if self.queries else 0.0

    def summary(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict.value,
            "p_value": self.p_value,
            "matches": self.matches,
            "queries": self.queries,
            "errors": self.errors,
            "watermark_accuracy": self.watermark_accuracy,
            "p0": self.p0,
            "alpha": self.alpha,
            "key_commitment": self.key_commitment,
            "suspect": self.suspect,
        }


def _valid_label(answer: object, num_classes: int) -> int | None:
    """The answer as a label if it is an integer in range, else None."""
    if isinstance(answer, bool) or not isinstance(answer, int | float):
        return None
    if isinstance(answer, float) and not (math.isfinite(answer) and answer.is_integer()):
        return None
    label = int(answer)
    return label if 0 <= label < num_classes else None


def verify_ownership(
    key: KeySet,
    suspect: Suspect,
    *,
    alpha: float = 1e-6,
    p0: float | None = None,
    max_queries: int | None = None,
    batch_size: int = 64,
    seed: int = 0,
) -> VerificationResult:
    """Query ``suspect`` with the key samples in a random order and decide ownership.

    Args:
        key: the owner's key.
        suspect: the black box to test.
        alpha: the false-claim rate accepted (default 1e-6).
        p0: false-match bound; default: the one stored in the key.
        max_queries: query at most this many key samples (default: all).
        batch_size: key samples per query call (default 64).
        seed: seeds the query order (default 0).

    Errors raised by the suspect, malformed answers and out-of-range labels are recorded
    and never count as matches; a result that is not "owned" because of them is
    "inconclusive".
    """
    bound = key.p0 if p0 is None else p0
    try:
        test = BinomialTest(p0=bound, alpha=alpha)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    order = torch.randperm(len(key), generator=torch.Generator().manual_seed(seed))
    if max_queries is not None:
        order = order[: max(0, max_queries)]
    records: list[QueryRecord] = []
    for start in range(0, len(order), batch_size):
        index = order[start : start + batch_size]
        images = key.images[index]
        hashes = [hashlib.sha256(img.numpy().tobytes()).hexdigest() for img in images]
        error: str | None = None
        try:
            answers = list(suspect.query(images))
            if len(answers) != len(index):
                error = f"expected {len(index)} answers, got {len(answers)}"
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
            answers = []
        for position, (row, digest) in enumerate(zip(index.tolist(), hashes, strict=True)):
            if error is not None:
                records.append(QueryRecord(row, digest, None, False, error))
                continue
            answer = answers[position]
            label = _valid_label(answer, key.num_classes)
            if label is None:
                records.append(
                    QueryRecord(row, digest, repr(answer), False, "answer is not a valid label")
                )
            else:
                records.append(QueryRecord(row, digest, label, label == int(key.labels[row])))
    matches = sum(r.matched for r in records)
    errors = sum(r.error is not None for r in records)
    verdict, p_value = test.decide(matches, len(records), errors)
    return VerificationResult(
        verdict=verdict,
        p_value=p_value,
        matches=matches,
        queries=len(records),
        errors=errors,
        p0=bound,
        alpha=alpha,
        key_commitment=key.commitment,
        suspect=suspect.address,
        records=records,
    )
