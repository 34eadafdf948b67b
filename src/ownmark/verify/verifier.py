"""Black-box ownership verification: query the suspect with the key, test the matches.

Zhang et al. 2018 (seed 000, §6-8) verify remotely: send key images to the suspect's API and
compare its answers with the key labels. We make that frugal and honest:

- key samples go out in an order fixed by the key's commitment, so nobody can search for
  a lucky order after seeing answers; every request has the same size and carries ordinary
  "decoy" images (the key's control group, drawn from the key's source classes) at positions
  also fixed by the commitment, so key queries cannot be singled out by their count or place;
- decoys are scored: "owned" needs the suspect to classify decoys far better than chance
  and to give the key label on key images far more often than on decoys (a one-sided Fisher
  exact test), so a constant, broken or key-label-for-everything API is never "owned";
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
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any

import numpy as np
import torch

from ownmark.errors import ConfigError
from ownmark.keys import KeySet
from ownmark.schemes import answer_matcher, key_identity
from ownmark.verify.stats import BinomialTest, Verdict, binomial_tail, fisher_one_sided
from ownmark.verify.suspects import (
    InvalidAnswer,
    QueryOnly,
    Suspect,
    SuspectUnreachable,
    as_suspect,
)


@dataclass(frozen=True)
class VerifyConfig:
    """How to verify (every field is recorded in the evidence).

    The query order and the decoys' places are not settings: they follow from the key's
    commitment, so whoever verifies cannot pick them after seeing answers.

    Attributes:
        alpha: the false-claim rate accepted; None (default) takes the key's plan (1e-6
            unless set at keygen). Choosing another after seeing a result is shopping: each
            extra try adds up to alpha to the false-claim rate.
        p0: false-match bound; None (default) takes the key's calibrated value.
        max_queries: key-query budget; None (default) takes the key's plan (100), capped at
            the key's size.
        sequential: stop as soon as the answer is clear (default True; see BinomialTest).
        request_size: images in every request, key samples plus decoys (default 16). All
            requests have this size, so their size says nothing about their content.
        decoy_ratio: at least this many decoys per key sample in a request (default 1.0);
            0 sends no control group (then a constant API can match a one-label key).
        control_level: significance both control tests must reach (default 0.01): decoy
            accuracy above chance (1/K), and more key labels on key images than on decoys.
        max_errors: failed queries (key or decoy) tolerated before stopping (default 10).
        min_watermark_rate: if set (e.g. 0.5), stop early with "not owned" once a match rate
            this high is implausible, ``P[Bin(queries, rate) <= matches] < 1e-3``: a clean
            model is then dismissed after about 10 misses, at the price of also dismissing
            heavily attacked watermarks that match less often. It cannot raise the
            false-claim rate. Default None: query until "owned" is reached or out of reach.
        unsafe_no_control: allow ``decoy_ratio=0`` for a key whose samples all share one
            label, as ownmark did before issue 7 (default False: refused, because an API
            that answers that label to everything is then "owned"). For measuring the old
            behaviour only; the CLI does not offer it and evidence check notes it.
    """

    alpha: float | None = None
    p0: float | None = None
    max_queries: int | None = None
    sequential: bool = True
    request_size: int = 16
    decoy_ratio: float = 1.0
    control_level: float = 0.01
    max_errors: int = 10
    min_watermark_rate: float | None = None
    unsafe_no_control: bool = False

    def __post_init__(self) -> None:
        if self.alpha is not None and not 0.0 < self.alpha < 1.0:
            raise ConfigError(f"alpha must lie strictly between 0 and 1, got {self.alpha}")
        if self.p0 is not None and not 0.0 < self.p0 < 1.0:
            raise ConfigError(f"p0 must lie strictly between 0 and 1, got {self.p0}")
        if self.max_queries is not None and self.max_queries < 1:
            raise ConfigError(f"max_queries must be at least 1, got {self.max_queries}")
        if self.request_size < 1:
            raise ConfigError(f"request_size must be at least 1, got {self.request_size}")
        if not 0.0 <= self.decoy_ratio <= 100.0:
            raise ConfigError(f"decoy_ratio must be between 0 and 100, got {self.decoy_ratio}")
        if self.decoy_ratio > 0 and self.request_size < 2:
            raise ConfigError("with decoys a request needs room for 2 images (request_size >= 2)")
        if not 0.0 < self.control_level < 1.0:
            raise ConfigError(f"control_level must lie in (0, 1), got {self.control_level}")
        if self.max_errors < 0:
            raise ConfigError(f"max_errors must be >= 0, got {self.max_errors}")
        if self.min_watermark_rate is not None and not 0.0 < self.min_watermark_rate < 1.0:
            raise ConfigError(
                f"min_watermark_rate must lie strictly between 0 and 1, got "
                f"{self.min_watermark_rate}"
            )

    @property
    def key_slots(self) -> int:
        """Most key samples in one request: the rest of it is decoys."""
        return max(1, int(self.request_size // (1 + self.decoy_ratio)))


@dataclass(frozen=True)
class QueryRecord:
    """One image sent to the suspect: a key sample or a decoy, its hash, the answer, when.

    ``index`` is the row in the key's images (key queries) or in its decoys (decoys);
    ``answer`` is the validated label, or the raw answer's ``repr`` when it was not a valid
    label. ``matched``: the answer is the image's key label (for a decoy: the key label of
    its class). ``correct``: for a decoy, the answer is its true label (None for key queries).
    """

    request: int
    role: str
    index: int
    image_sha256: str
    answer: Any
    matched: bool
    error: str | None
    sent: str
    received: str
    correct: bool | None = None


@dataclass(frozen=True)
class ControlResult:
    """The decoy control group's answers and its two one-sided tests.

    ``accuracy_p``: P[Bin(answered, 1/K) >= correct], small when the suspect classifies
    decoys like a working model. ``separation_p``: Fisher's exact one-sided p-value that the
    key-label rate on key queries exceeds the key-label rate on decoys. Both must be at most
    the control level for "owned".
    """

    decoys: int
    answered: int
    correct: int
    key_label_hits: int
    accuracy_p: float
    separation_p: float
    level: float

    @property
    def passed(self) -> bool:
        return self.accuracy_p <= self.level and self.separation_p <= self.level

    @property
    def accuracy(self) -> float:
        return self.correct / self.answered if self.answered else 0.0


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
    config: VerifyConfig
    control: ControlResult | None
    key_commitment: str
    suspect: str
    protocol: str
    started: str
    finished: str
    records: list[QueryRecord] = field(default_factory=list)
    #: what the suspect's client counted (HTTP requests incl. retries and metadata, ...).
    transport: dict[str, int] = field(default_factory=dict)
    #: every option that shaped the requests (encoding, names, template, labels, ...).
    options: dict[str, Any] = field(default_factory=dict)
    #: per request: the SHA-256 (and id) of each body sent, for ``evidence check``.
    wire: list[dict[str, Any]] = field(default_factory=list)
    #: the key's scheme's second leg (:meth:`~ownmark.schemes.WatermarkScheme.identity`;
    #: UDH: the copyright image revealed from the triggers); None for schemes without one.
    identity: dict[str, Any] | None = None

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
            "config": asdict(self.config),
            "control": None if self.control is None else asdict(self.control),
            "key_commitment": self.key_commitment,
            "suspect": self.suspect,
            "protocol": self.protocol,
            "transport": self.transport,
            "options": self.options,
            "identity": self.identity,
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


def score_answer(answer: object, num_classes: int) -> tuple[Any, int | None, str | None]:
    """(recorded answer, label or None, error) for one raw answer.

    An :class:`~ownmark.verify.suspects.InvalidAnswer` (tied or non-finite scores) and
    anything that is not a label in range are errors: they never match.
    """
    if isinstance(answer, InvalidAnswer):
        return repr(answer), None, answer.reason
    label = valid_label(answer, num_classes)
    if label is None:
        return repr(answer), None, f"answer is not a label in 0..{num_classes - 1}"
    return label, label, None


def control_test(records: list[QueryRecord], num_classes: int, level: float) -> ControlResult:
    """The control group's tests from a run's records (see :class:`ControlResult`)."""
    decoys = [r for r in records if r.role == "decoy"]
    answered = [r for r in decoys if r.error is None]
    keys = [r for r in records if r.role == "key" and r.error is None]
    correct = sum(bool(r.correct) for r in answered)
    hits = sum(r.matched for r in answered)
    key_matches = sum(r.matched for r in keys)
    return ControlResult(
        decoys=len(decoys),
        answered=len(answered),
        correct=correct,
        key_label_hits=hits,
        accuracy_p=binomial_tail(correct, len(answered), 1.0 / num_classes) if answered else 1.0,
        separation_p=fisher_one_sided(key_matches, len(keys), hits, len(answered)),
        level=level,
    )


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

    Alpha and the budget come from the key's plan unless ``config`` sets them.

    Raises:
        ConfigError: an invalid p0, or a budget that could never reach alpha.
    """
    try:
        test = BinomialTest(
            p0=key.p0 if config.p0 is None else config.p0,
            alpha=key.alpha if config.alpha is None else config.alpha,
            max_queries=min(config.max_queries or key.max_queries, len(key)),
            sequential=config.sequential,
        )
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    if test.queries_to_owned(0, 0) is None:
        raise ConfigError(
            f"{test.max_queries} key queries can never reach alpha {test.alpha:g} at p0 "
            f"{test.p0:.4g}; raise the budget (--max-queries), accept a larger alpha, or make "
            "a key with more samples that survive calibration (a lower p0)"
        )
    one_label = len(set(key.labels.tolist())) == 1
    if config.decoy_ratio <= 0 and one_label and not config.unsafe_no_control:
        raise ConfigError(
            "this key gives every sample the same label, so without decoys an API that "
            "answers that label to everything would be 'owned'; keep decoys on (decoy_ratio "
            "> 0, --decoys 1)"
        )
    if config.decoy_ratio > 0 and len(key.decoys) == 0:
        raise ConfigError(
            "the key holds no decoys for the control group; make a key with num_decoys > 0 "
            "or verify with decoy_ratio 0 (--decoys 0), which a constant API can fool"
        )
    return test


def _derived_seed(commitment: str, purpose: str) -> int:
    """A 63-bit seed fixed by a key's commitment (nobody picks it after the fact)."""
    digest = hashlib.sha256(f"{commitment}|{purpose}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def query_order(key: KeySet, budget: int) -> list[int]:
    """The key rows a verification queries, in order: fixed by the key's commitment."""
    return RequestLayout(key, VerifyConfig(decoy_ratio=0)).order[:budget]


class RequestLayout:
    """What each request of a verification holds, all fixed by the key's commitment.

    The key samples go out in :attr:`order`; each request is filled to
    ``config.request_size`` with decoys taken in a committed order (wrapping around only if
    the key's decoys run out) at places fixed by the commitment and the request's number.
    The verifier sends these requests and ``evidence check`` recomputes them. The key's
    commitment is hashed once, here.
    """

    def __init__(self, key: KeySet, config: VerifyConfig) -> None:
        commitment = key.commitment
        self.commitment = commitment
        self._config = config
        self._use_decoys = config.decoy_ratio > 0 and len(key.decoys) > 0
        order = torch.Generator().manual_seed(_derived_seed(commitment, "query-order"))
        self.order: list[int] = torch.randperm(len(key), generator=order).tolist()
        decoys = torch.Generator().manual_seed(_derived_seed(commitment, "decoy-order"))
        self._decoy_order: list[int] = torch.randperm(len(key.decoys), generator=decoys).tolist()

    def items(self, key_rows: list[int], request: int, decoy_cursor: int) -> list[tuple[str, int]]:
        """(role, row) of each image of request number ``request``, in the order sent."""
        items: list[tuple[str, int]] = [("key", row) for row in key_rows]
        if not self._use_decoys:
            return items
        places = random.Random(_derived_seed(self.commitment, f"decoy-places-{request}"))
        for j in range(self._config.request_size - len(key_rows)):
            decoy = self._decoy_order[(decoy_cursor + j) % len(self._decoy_order)]
            items.insert(places.randrange(len(items) + 1), ("decoy", decoy))
        return items


def verify_ownership(
    key: KeySet,
    suspect: Suspect | QueryOnly,
    config: VerifyConfig | None = None,
    *,
    on_request: Callable[[int, int, int], None] | None = None,
    test: BinomialTest | None = None,
    check_input: bool = False,
    **overrides: Any,
) -> VerificationResult:
    """Query ``suspect`` with the key samples and its decoys and decide ownership.

    Args:
        key: the owner's key (its p0 is the calibrated false-match bound; its decoys are
            the control group; its commitment fixes the query order).
        suspect: the black box to test (a local model, an HTTP API, an adapter).
        config: how to verify; keyword ``overrides`` replace single fields, e.g.
            ``verify_ownership(key, suspect, alpha=1e-3)``.
        on_request: called after each request with (requests, key queries, matches).
        test: the test :func:`plan_test` made for ``key`` and this config, when the caller
            has planned it already (default None: planned here), so it is planned once.
        check_input: ask the suspect first whether it takes the key's images (for an API
            this fetches its metadata; default False: the CLI checks before it plans).

    Raises:
        SuspectUnreachable: the first request got no answer of any kind (a wrong address,
            a server that is down); nothing was verified.
        ConfigError, QueryError: with ``check_input``, the suspect does not take the key's
            images or its metadata cannot be fetched.

    Returns:
        The verdict, the statistics and a record of every query. "owned" needs the binomial
        test to reach alpha **and** the control group to pass.
    """
    config = VerifyConfig(**{**asdict(config or VerifyConfig()), **overrides})
    test = plan_test(key, config) if test is None else test
    suspect = as_suspect(suspect)
    if check_input:
        suspect.check_input(key.image_shape)
    wire: list[dict[str, Any]] = []
    layout = RequestLayout(key, config)
    match_rule = answer_matcher(key)  # the scheme's rule, resolved once for every answer
    records: list[QueryRecord] = []
    started = _now()
    sent = matches = errors = all_errors = requests = decoy_cursor = 0
    control: ControlResult | None = None
    stop_reason = "budget"
    while sent < test.max_queries:
        # Failed queries might have been matches: keep asking while they could still matter,
        # so that a flaky API ends "not owned" or "owned" on answered queries where it can.
        needed = test.queries_to_owned(matches + errors, sent)
        if needed is None:
            stop_reason = "futile"
            break
        size = min(needed if config.sequential else test.max_queries, config.key_slots)
        rows = layout.order[sent : min(sent + size, test.max_queries)]
        items = layout.items(rows, requests, decoy_cursor)
        answered = _one_request(key, suspect, items, requests, match_rule)
        records.extend(answered)
        sent_bodies = [body.to_dict() for body in suspect.take_sent()]
        wire.append({"request": requests, "bodies": sent_bodies})
        requests += 1
        sent += len(rows)
        decoy_cursor += len(items) - len(rows)
        matches += sum(r.matched for r in answered if r.role == "key")
        errors += sum(r.error is not None for r in answered if r.role == "key")
        all_errors += sum(r.error is not None for r in answered)
        if on_request is not None:
            on_request(requests, sent, matches)
        if config.decoy_ratio > 0:
            control = control_test(records, key.num_classes, config.control_level)
        if test.reached(matches, sent) and (control is None or control.passed):
            stop_reason = "owned"
            break
        if all_errors > config.max_errors:
            stop_reason = "errors"
            break
        # Failed queries might have been matches: only answered misses count against.
        if implausibly_few(matches + errors, sent, config.min_watermark_rate):
            stop_reason = "dismissed"
            break
    if stop_reason != "owned" and test.reached(matches, sent) and control is not None:
        stop_reason = "control failed"  # alpha was reached, the decoys were not told apart
    verdict, p_value = decide(test, matches, sent, errors, stop_reason, control)
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
        config=config,
        control=control,
        key_commitment=layout.commitment,
        suspect=suspect.address,
        protocol=suspect.protocol,
        transport=asdict(suspect.counters),
        options=suspect.options(),
        wire=wire,
        started=started,
        finished=_now(),
        records=records,
        identity=key_identity(key),
    )


def decide(
    test: BinomialTest,
    matches: int,
    queries: int,
    errors: int,
    stop_reason: str,
    control: ControlResult | None,
) -> tuple[Verdict, float]:
    """The verdict: the binomial test's, except that a failed control is never "owned".

    A suspect that reaches alpha but fails the control (decoys answered like key images, or
    no better than chance) does not behave like a working classifier carrying the mark: the
    run says nothing either way, so it is "inconclusive".
    """
    verdict, p_value = test.decide(matches, queries, errors, dismissed=stop_reason == "dismissed")
    if verdict is Verdict.OWNED and control is not None and not control.passed:
        return Verdict.INCONCLUSIVE, p_value
    return verdict, p_value


def _one_request(
    key: KeySet,
    suspect: Suspect,
    items: list[tuple[str, int]],
    request: int,
    matches: Callable[[int | None, int], bool],
) -> list[QueryRecord]:
    """Send the request's images as one query; record and score each image."""
    images = torch.stack([key.images[i] if role == "key" else key.decoys[i] for role, i in items])
    hashes = [image_sha256(image) for image in images]
    sent_at = _now()
    failure: str | None = None
    answers: list[object] = []
    try:
        answers = list(suspect.query(images))
        if len(answers) != len(items):
            failure = f"expected {len(items)} answers, got {len(answers)}"
    except SuspectUnreachable as exc:
        if request == 0:
            raise  # a wrong address or a server that is down: say so, do not "verify"
        failure = f"{type(exc).__name__}: {exc}"
    except Exception as exc:  # any failure of the suspect is an error, never a crash
        failure = f"{type(exc).__name__}: {exc}"
    received_at = _now()
    records = []
    for position, ((role, i), digest) in enumerate(zip(items, hashes, strict=True)):
        correct: bool | None = None
        key_label = int((key.labels if role == "key" else key.decoy_key_labels)[i])
        shown: Any
        label: int | None
        error: str | None
        if failure is not None:
            shown, label, error = None, None, failure
        else:
            shown, label, error = score_answer(answers[position], key.model_classes)
        if role == "decoy":
            correct = label is not None and label == int(key.decoy_labels[i])
        records.append(
            QueryRecord(
                request=request,
                role=role,
                index=i,
                image_sha256=digest,
                answer=shown,
                matched=matches(label, key_label),
                error=error,
                sent=sent_at,
                received=received_at,
                correct=correct,
            )
        )
    return records
