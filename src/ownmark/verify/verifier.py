"""Black-box ownership verification: query the suspect with the key, test the matches.

Zhang et al. 2018 (seed 000, §6-8) verify remotely: send key images to the suspect's API and
compare its answers with the key labels. We make that frugal and honest:

- key samples go out in a random (seeded, recorded) order, optionally mixed with ordinary
  "decoy" images so that key queries cannot be singled out by their position or count;
- each request carries just enough key samples to possibly reach a decision, and the
  verifier stops as soon as :class:`~ownmark.verify.stats.BinomialTest` says "owned" (its
  Bonferroni rule keeps the false-claim rate <= alpha however often it looks), as soon as
  "owned" is out of reach, or as soon as the suspect clearly matches too rarely to carry the
  watermark (``min_watermark_rate``; stopping to say "not owned" never claims anything);
- errors, timeouts and malformed or out-of-range answers never count as matches; too many of
  them stop the run, and a verdict they could have changed is "inconclusive".

Every query is recorded (image hash, answer, time stamps), so the result can be written as
evidence (:mod:`ownmark.verify.evidence`) and re-checked by anyone holding the key.
"""

from __future__ import annotations

import hashlib
import math
import random
import secrets
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any

import numpy as np
import torch

from ownmark.errors import ConfigError
from ownmark.keys import KeySet
from ownmark.verify.stats import BinomialTest, Verdict, binomial_tail
from ownmark.verify.suspects import Suspect


@dataclass(frozen=True)
class VerifyConfig:
    """How to verify (every field is recorded in the evidence).

    Attributes:
        alpha: the false-claim rate accepted (default 1e-6).
        p0: false-match bound; None (default) takes the key's calibrated value.
        max_queries: key-query budget (default 100; capped at the key's size).
        sequential: stop as soon as the answer is clear (default True; see BinomialTest).
        max_batch: most key samples in one request (default 32).
        decoy_ratio: ordinary images sent per key image (default 0: none).
        max_errors: failed key queries tolerated before stopping (default 10).
        min_watermark_rate: if set (e.g. 0.5), stop early with "not owned" once a match rate
            this high is implausible, ``P[Bin(queries, rate) <= matches] < 1e-3``: a clean
            model is then dismissed after about 10 misses, at the price of also dismissing
            heavily attacked watermarks that match less often. It cannot raise the
            false-claim rate. Default None: query until "owned" is reached or out of reach.
        seed: seeds the query order and decoy mixing; None draws a fresh one (recorded).
    """

    alpha: float = 1e-6
    p0: float | None = None
    max_queries: int = 100
    sequential: bool = True
    max_batch: int = 32
    decoy_ratio: float = 0.0
    max_errors: int = 10
    min_watermark_rate: float | None = None
    seed: int | None = None

    def __post_init__(self) -> None:
        if not 0.0 < self.alpha < 1.0:
            raise ConfigError(f"alpha must lie strictly between 0 and 1, got {self.alpha}")
        if self.p0 is not None and not 0.0 < self.p0 < 1.0:
            raise ConfigError(f"p0 must lie strictly between 0 and 1, got {self.p0}")
        if self.max_queries < 1:
            raise ConfigError(f"max_queries must be at least 1, got {self.max_queries}")
        if self.max_batch < 1:
            raise ConfigError(f"max_batch must be at least 1, got {self.max_batch}")
        if not 0.0 <= self.decoy_ratio <= 100.0:
            raise ConfigError(f"decoy_ratio must be between 0 and 100, got {self.decoy_ratio}")
        if self.max_errors < 0:
            raise ConfigError(f"max_errors must be >= 0, got {self.max_errors}")
        if self.min_watermark_rate is not None and not 0.0 < self.min_watermark_rate < 1.0:
            raise ConfigError(
                f"min_watermark_rate must lie strictly between 0 and 1, got "
                f"{self.min_watermark_rate}"
            )


@dataclass(frozen=True)
class QueryRecord:
    """One image sent to the suspect: a key sample or a decoy, its hash, the answer, when.

    ``index`` is the key sample's row for key queries and None for decoys; ``answer`` is the
    validated label, or the raw answer's ``repr`` when it was not a valid label.
    """

    request: int
    role: str
    index: int | None
    image_sha256: str
    answer: Any
    matched: bool
    error: str | None
    sent: str
    received: str


@dataclass(frozen=True)
class VerificationResult:
    """Everything a verification measured and decided."""

    verdict: Verdict
    p_value: float
    adjusted_p_value: float
    matches: int
    queries: int
    errors: int
    decoys: int
    requests: int
    stop_reason: str
    p0: float
    alpha: float
    budget: int
    method: str
    seed: int
    config: VerifyConfig
    key_commitment: str
    suspect: str
    protocol: str
    started: str
    finished: str
    records: list[QueryRecord] = field(default_factory=list)
    #: what the suspect's client counted (HTTP requests incl. retries and metadata, ...).
    transport: dict[str, int] = field(default_factory=dict)

    @property
    def watermark_accuracy(self) -> float:
        """Fraction of the key queries sent that matched their key label."""
        return self.matches / self.queries if self.queries else 0.0

    def summary(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict.value,
            "p_value": self.p_value,
            "adjusted_p_value": self.adjusted_p_value,
            "matches": self.matches,
            "queries": self.queries,
            "errors": self.errors,
            "decoys": self.decoys,
            "requests": self.requests,
            "stop_reason": self.stop_reason,
            "watermark_accuracy": self.watermark_accuracy,
            "p0": self.p0,
            "alpha": self.alpha,
            "budget": self.budget,
            "method": self.method,
            "seed": self.seed,
            "config": asdict(self.config),
            "key_commitment": self.key_commitment,
            "suspect": self.suspect,
            "protocol": self.protocol,
            "transport": self.transport,
        }


def image_sha256(image: torch.Tensor) -> str:
    """SHA-256 of an image's uint8 bytes (C×H×W, row-major): what the evidence records."""
    return hashlib.sha256(image.contiguous().numpy().tobytes()).hexdigest()


def valid_label(answer: object, num_classes: int) -> int | None:
    """The answer as a label if it is an integer (or integral float) in range, else None.

    numpy scalars and 0-d tensors count as their value (a user's suspect may return argmax
    output as is).
    """
    if isinstance(answer, np.generic) or (isinstance(answer, torch.Tensor) and answer.ndim == 0):
        answer = answer.item()
    if isinstance(answer, bool) or not isinstance(answer, int | float):
        return None
    if isinstance(answer, float) and not (math.isfinite(answer) and answer.is_integer()):
        return None
    label = int(answer)
    return label if 0 <= label < num_classes else None


def key_query_outcome(
    answer: object, key_label: int, num_classes: int
) -> tuple[Any, bool, str | None]:
    """(recorded answer, matched, error) for one key query's raw answer."""
    label = valid_label(answer, num_classes)
    if label is None:
        return repr(answer), False, f"answer is not a label in 0..{num_classes - 1}"
    return label, label == key_label, None


#: How unlikely the matches so far must be for a watermarked suspect before giving up.
FUTILITY_LEVEL = 1e-3


def implausibly_few(matches: int, queries: int, rate: float | None) -> bool:
    """Whether ``P[Bin(queries, rate) <= matches] < FUTILITY_LEVEL`` (never if rate is None)."""
    if rate is None:
        return False
    return 1.0 - binomial_tail(matches + 1, queries, rate) < FUTILITY_LEVEL


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def plan_test(key: KeySet, config: VerifyConfig) -> BinomialTest:
    """The test a verification of ``key`` under ``config`` runs; checked before any query.

    Raises:
        ConfigError: an invalid p0, or a budget that could never reach alpha.
    """
    try:
        test = BinomialTest(
            p0=key.p0 if config.p0 is None else config.p0,
            alpha=config.alpha,
            max_queries=min(config.max_queries, len(key)),
            sequential=config.sequential,
        )
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    if test.queries_to_owned(0, 0) is None:
        raise ConfigError(
            f"{test.max_queries} key queries can never reach alpha {test.alpha:g} at p0 "
            f"{test.p0:.4g}; raise the budget (--max-queries), use more key samples, calibrate "
            "the key on reference models (lower p0), or accept a larger alpha"
        )
    return test


def query_order(key: KeySet, seed: int, budget: int) -> list[int]:
    """The key rows a verification with ``seed`` queries, in order (re-checkable from evidence)."""
    permutation = torch.randperm(len(key), generator=torch.Generator().manual_seed(seed))
    order: list[int] = permutation[:budget].tolist()
    return order


def verify_ownership(
    key: KeySet,
    suspect: Suspect,
    config: VerifyConfig | None = None,
    *,
    decoys: torch.Tensor | None = None,
    on_request: Callable[[int, int, int], None] | None = None,
    **overrides: Any,
) -> VerificationResult:
    """Query ``suspect`` with the key samples in a random order and decide ownership.

    Args:
        key: the owner's key (its p0 is the calibrated false-match bound).
        suspect: the black box to test (a local model, an HTTP API, an adapter).
        config: how to verify; keyword ``overrides`` replace single fields, e.g.
            ``verify_ownership(key, suspect, alpha=1e-3, seed=0)``.
        decoys: uint8 images (N×C×H×W) to mix in when ``config.decoy_ratio > 0``.
        on_request: called after each request with (requests, key queries, matches).

    Returns:
        The verdict, the statistics and a record of every query.
    """
    config = VerifyConfig(**{**asdict(config or VerifyConfig()), **overrides})
    seed = config.seed if config.seed is not None else secrets.randbits(32)
    test = plan_test(key, config)
    if config.decoy_ratio > 0 and (decoys is None or len(decoys) == 0):
        raise ConfigError("decoy_ratio > 0 needs decoy images (e.g. --decoy-data NAME)")
    if decoys is not None and decoys.shape[1:] != key.images.shape[1:]:
        raise ConfigError(
            f"decoy images are {tuple(decoys.shape[1:])} but key images are {key.image_shape}"
        )
    rng = random.Random(seed)
    order = query_order(key, seed, test.max_queries)
    # Decoys are drawn without replacement (a repeated image would stand out).
    decoy_order = list(range(len(decoys))) if decoys is not None else []
    rng.shuffle(decoy_order)
    records: list[QueryRecord] = []
    started = _now()
    sent = matches = errors = requests = 0
    stop_reason = "budget"
    while sent < test.max_queries:
        # Failed queries might have been matches: keep asking while they could still matter,
        # so that a flaky API ends "not owned" or "owned" on answered queries where it can.
        needed = test.queries_to_owned(matches + errors, sent)
        if needed is None:
            stop_reason = "futile"
            break
        size = min(needed if config.sequential else test.max_queries, config.max_batch)
        rows = order[sent : sent + size]
        answered = _one_request(key, suspect, rows, decoys, decoy_order, config, rng, requests)
        records.extend(answered)
        requests += 1
        sent += len(rows)
        matches += sum(r.matched for r in answered if r.role == "key")
        errors += sum(r.error is not None for r in answered if r.role == "key")
        if on_request is not None:
            on_request(requests, sent, matches)
        if test.reached(matches, sent):
            stop_reason = "owned"
            break
        if errors > config.max_errors:
            stop_reason = "errors"
            break
        # Failed queries might have been matches: only answered misses count against.
        if implausibly_few(matches + errors, sent, config.min_watermark_rate):
            stop_reason = "dismissed"
            break
    verdict, p_value = test.decide(matches, sent, errors, dismissed=stop_reason == "dismissed")
    return VerificationResult(
        verdict=verdict,
        p_value=p_value,
        adjusted_p_value=test.adjusted_p_value(matches, sent),
        matches=matches,
        queries=sent,
        errors=errors,
        decoys=sum(r.role == "decoy" for r in records),
        requests=requests,
        stop_reason=stop_reason,
        p0=test.p0,
        alpha=test.alpha,
        budget=test.max_queries,
        method=test.method,
        seed=seed,
        config=config,
        key_commitment=key.commitment,
        suspect=suspect.address,
        protocol=str(getattr(suspect, "protocol", "python")),
        transport={
            name: int(getattr(suspect, name))
            for name in ("requests_sent", "images_sent", "retries_done")
            if isinstance(getattr(suspect, name, None), int)
        },
        started=started,
        finished=_now(),
        records=records,
    )


def _one_request(
    key: KeySet,
    suspect: Suspect,
    rows: list[int],
    decoys: torch.Tensor | None,
    decoy_order: list[int],
    config: VerifyConfig,
    rng: random.Random,
    request: int,
) -> list[QueryRecord]:
    """Send ``rows`` of the key (plus decoys, shuffled in) as one query; record each image."""
    # Probabilistic rounding keeps the expected decoy count at ratio × key images.
    expected = config.decoy_ratio * len(rows)
    n_decoys = int(expected) + (rng.random() < expected - int(expected))
    items: list[tuple[str, int]] = [("key", row) for row in rows]
    if decoys is not None and n_decoys:
        for _ in range(n_decoys):
            # Random positions, but the key samples keep their seeded order (re-checkable).
            items.insert(rng.randrange(len(items) + 1), ("decoy", decoy_order[0]))
            decoy_order.append(decoy_order.pop(0))  # wraps around only if the pool runs out
    images = torch.stack(
        [key.images[i] if role == "key" else decoys[i] for role, i in items]  # type: ignore[index]
    )
    hashes = [image_sha256(image) for image in images]
    sent_at = _now()
    failure: str | None = None
    answers: list[object] = []
    try:
        answers = list(suspect.query(images))
        if len(answers) != len(items):
            failure = f"expected {len(items)} answers, got {len(answers)}"
    except Exception as exc:  # any failure of the suspect is an error, never a crash
        failure = f"{type(exc).__name__}: {exc}"
    received_at = _now()
    records = []
    for position, ((role, i), digest) in enumerate(zip(items, hashes, strict=True)):
        index = i if role == "key" else None
        if failure is not None:
            records.append(
                QueryRecord(
                    request, role, index, digest, None, False, failure, sent_at, received_at
                )
            )
        elif role == "decoy":
            answer = answers[position]
            plain = isinstance(answer, int) and not isinstance(answer, bool)
            shown = answer if plain else repr(answer)
            records.append(
                QueryRecord(request, role, None, digest, shown, False, None, sent_at, received_at)
            )
        else:
            answer, matched, error = key_query_outcome(
                answers[position], int(key.labels[i]), key.num_classes
            )
            records.append(
                QueryRecord(request, role, i, digest, answer, matched, error, sent_at, received_at)
            )
    return records
