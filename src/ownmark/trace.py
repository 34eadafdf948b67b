"""Licensee tracing: which customer's copy does a suspect API serve? (issue 12, beyond seed 004)

An owner who sells one model to several customers embeds a different key in each copy (for
the ``udh`` scheme, ``licensee=<id>``: the payload "licensee <id>"). Given the licensees' keys
and one suspect, :func:`trace_licensees` runs ownmark's ordinary verification with each key
(its calibrated p0, decoys and plan) and corrects the p-values for testing several licensees
at once with Holm's step-down procedure (family-wise error at each key's alpha): an innocent
suspect is attributed to some licensee with probability at most alpha, whatever the number
of licensees.

The attribution:

- ``licensee`` — exactly one licensee's key verifies after the correction;
- ``ambiguous`` — several do (e.g. two licensees who averaged their copies' weights); all of
  them are named, and none is singled out;
- ``none`` — no key verifies (a clean model, another owner's model);
- ``inconclusive`` — no key verifies and some verification hit errors.

For the per-licensee p-value to be "against all the others", calibrate each licensee's key
with the other licensees' copies as ``other-key`` references (:func:`calibrate_licensees`):
then p0 bounds how often *another licensee's* copy answers this licensee's key, and a copy is
never attributed to an innocent licensee at more than alpha.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ownmark.calibrate import CalibrationReport, calibrate_key
from ownmark.data.base import ImageDataset
from ownmark.errors import ConfigError
from ownmark.keys import KeySet
from ownmark.models import Classifier
from ownmark.verify import Verdict, VerifyConfig, verify_ownership
from ownmark.verify.suspects import QueryOnly, Suspect


@dataclass(frozen=True)
class LicenseeTest:
    """One licensee's verification inside a trace."""

    licensee: str
    commitment: str
    verdict: str
    p_value: float
    holm_p_value: float
    matches: int
    queries: int
    errors: int


@dataclass(frozen=True)
class TraceResult:
    """The attribution of one suspect (see the module docstring)."""

    attribution: str
    licensees: list[str]
    tests: list[LicenseeTest] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {
            "attribution": self.attribution,
            "licensees": self.licensees,
            "tests": [t.__dict__ for t in self.tests],
        }


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (same order as given)."""
    order = sorted(range(len(p_values)), key=lambda i: p_values[i])
    adjusted = [1.0] * len(p_values)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(p_values) - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


def trace_licensees(
    keys: Mapping[str, KeySet],
    suspect: Suspect | QueryOnly,
    config: VerifyConfig | None = None,
) -> TraceResult:
    """Verify ``suspect`` with every licensee's key and attribute it (module docstring).

    Args:
        keys: licensee name -> that licensee's (calibrated) key.
        suspect: the API or model to trace.
        config: verification settings for every key (default: each key's own plan).
    """
    if len(keys) < 2:
        raise ConfigError(f"tracing needs the keys of at least 2 licensees, got {len(keys)}")
    names = sorted(keys)
    results = [verify_ownership(keys[name], suspect, config) for name in names]
    adjusted = holm([r.p_value for r in results])
    tests = [
        LicenseeTest(
            licensee=name,
            commitment=keys[name].commitment,
            verdict=r.verdict.value,
            p_value=r.p_value,
            holm_p_value=adjusted[i],
            matches=r.matches,
            queries=r.queries,
            errors=r.errors,
        )
        for i, (name, r) in enumerate(zip(names, results, strict=True))
    ]
    found = [
        test.licensee
        for test, r in zip(tests, results, strict=True)
        if r.verdict is Verdict.OWNED and test.holm_p_value <= r.alpha
    ]
    if len(found) == 1:
        return TraceResult("licensee", found, tests)
    if found:
        return TraceResult("ambiguous", found, tests)
    if any(r.verdict is Verdict.INCONCLUSIVE for r in results):
        return TraceResult("inconclusive", [], tests)
    return TraceResult("none", [], tests)


def calibrate_licensees(
    keys: Mapping[str, KeySet],
    copies: Mapping[str, Classifier],
    references: Sequence[Classifier],
    *,
    test: ImageDataset | None = None,
    allow_weak: bool = False,
    min_reference_accuracy: float = 0.5,
) -> tuple[dict[str, KeySet], dict[str, CalibrationReport]]:
    """Calibrate each licensee's key on the clean ``references`` plus every *other*
    licensee's copy (as ``other-key`` references), so its p0 bounds the answers of the
    other licensees' models too. ``test``, ``allow_weak`` and ``min_reference_accuracy``
    (default 0.5) as in :func:`~ownmark.calibrate.calibrate_key`."""
    if set(keys) != set(copies):
        raise ConfigError("give one copy per licensee key, under the same names")
    calibrated: dict[str, KeySet] = {}
    reports: dict[str, CalibrationReport] = {}
    for name, key in keys.items():
        others = [other for other in sorted(copies) if other != name]
        models = [*references, *(copies[other] for other in others)]
        groups = ["clean"] * len(references) + ["other-key"] * len(others)
        labels = [f"reference-{i}" for i in range(len(references))] + [
            f"licensee {other}" for other in others
        ]
        calibrated[name], reports[name] = calibrate_key(
            key,
            models,
            names=labels,
            groups=groups,
            test=test,
            allow_weak=allow_weak,
            min_reference_accuracy=min_reference_accuracy,
        )
    return calibrated, reports
