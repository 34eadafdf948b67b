"""Calibrate a key's false-match rate p0 on innocent reference models.

H0 of a verification is "the suspect is innocent: trained without our key"; under it a key
query matches its key label with probability at most ``p0``. Innocent models come in two
groups, and both are measured: **clean** models, and models that carry **another owner's
key** of the same scheme (a watermark of the same family may answer our key too).

That rate is not ``1/K``: a clean model shown a stamped "1" may still say "1", but shown a
letter it may say "0" far more often than chance. So p0 is measured:

1. Run every key sample through ``R`` innocent reference models (different seeds, at least two
   architectures) and **drop the samples any of them maps to the key label** — those would
   match an innocent model.
2. Bound the false-match rate of a *new* independent model on the samples that survive. The
   screening used every reference, so their own match rate on the kept samples is 0 by
   construction and says nothing. We measure it leave-one-out instead: for each reference
   ``r``, screen with the other ``R-1`` references only and count ``r``'s matches on what
   survives (a set screened by one model fewer than the real key: errs on the safe side).
3. Bound each reference's leave-one-out rate by its one-sided Clopper–Pearson upper bound at
   ``confidence`` (default 0.999) and store the **largest** as the key's p0.

Why per model and the maximum, rather than pooling all references' trials: one model's
matches are correlated (the same quirk fires on similar images), and innocent models differ
from each other, so pooled trials would overstate how much is known. The maximum treats each
reference as one draw of "an innocent model".

What that does and does not cover: Clopper-Pearson covers the sampling noise inside one
reference, not the variation between innocent models. A new innocent model can exceed all
R references with probability up to 1/(R+1) (exchangeability), so the honest guarantee is

    P(false claim) <= alpha + P(an innocent model's match rate > p0).

The second term is estimated (:func:`innocent_tail`) by fitting a beta distribution to the
references' per-model leave-one-out rates (a beta-binomial, method of moments on
Jeffreys-smoothed rates) and reported next to the distribution-free 1/(R+1); both go into
the key's ``p0_source`` and every evidence file.

References must also be working models: one near chance accuracy matches nothing for the
wrong reason, so references below ``min_reference_accuracy`` on the test split are refused.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch

from ownmark.data import ImageDataset
from ownmark.errors import ConfigError
from ownmark.keys import KeySet
from ownmark.metrics import accuracy, predict
from ownmark.models import Classifier
from ownmark.schemes import key_matches
from ownmark.verify.stats import BinomialTest, clopper_pearson_upper

#: Reference groups: clean models, and models carrying another key of the same scheme.
GROUPS = ("clean", "other-key")

#: Fewest key samples a calibrated key may keep: fewer cannot support a low p-value budget.
MIN_KEPT_SAMPLES = 10


@dataclass(frozen=True)
class ReferenceResult:
    """One reference model's false matches: on the whole key, and leave-one-out."""

    name: str
    arch: str
    group: str
    test_accuracy: float | None
    matches_on_key: int
    loo_trials: int
    loo_matches: int
    upper_bound: float


@dataclass(frozen=True)
class CalibrationReport:
    """What calibration measured and the bound it stored (see the module docstring)."""

    p0: float
    confidence: float
    matches: int
    trials: int
    kept: int
    dropped: int
    architectures: tuple[str, ...]
    references: tuple[ReferenceResult, ...]
    #: Estimated P(an innocent model's match rate > p0) (beta-binomial fit).
    innocent_tail: float
    #: Distribution-free bound on the same: a new model exceeds all R references <= 1/(R+1).
    innocent_tail_bound: float

    @property
    def method(self) -> str:
        return (
            "largest per-reference leave-one-out Clopper-Pearson upper bound on innocent "
            "reference models (clean, and carrying other keys)"
        )

    def group_rates(self) -> dict[str, tuple[int, int, int]]:
        """{group: (models, leave-one-out matches, trials)} for each group present."""
        out: dict[str, tuple[int, int, int]] = {}
        for r in self.references:
            models, matches, trials = out.get(r.group, (0, 0, 0))
            out[r.group] = (models + 1, matches + r.loo_matches, trials + r.loo_trials)
        return out

    def as_dict(self) -> dict[str, object]:
        return {"method": self.method, **asdict(self)}

    def source(self) -> str:
        """The compact description stored as the key's ``p0_source``."""
        return json.dumps(
            {
                "method": self.method,
                "confidence": self.confidence,
                "matches": self.matches,
                "trials": self.trials,
                "kept": self.kept,
                "dropped": self.dropped,
                "references": [f"{r.name} ({r.arch}, {r.group})" for r in self.references],
                "groups": {g: list(v) for g, v in self.group_rates().items()},
                "innocent_tail": self.innocent_tail,
                "innocent_tail_bound": self.innocent_tail_bound,
            },
            sort_keys=True,
        )


def calibrate_key(
    key: KeySet,
    references: Sequence[Classifier],
    *,
    names: Sequence[str] | None = None,
    groups: Sequence[str] | None = None,
    confidence: float = 0.999,
    min_architectures: int = 2,
    test: ImageDataset | None = None,
    min_reference_accuracy: float = 0.5,
    allow_weak: bool = False,
) -> tuple[KeySet, CalibrationReport]:
    """Drop key samples innocent references already map to the key label; bound p0 on the rest.

    Args:
        key: the freshly generated key.
        references: independently trained innocent models (different seeds; at least
            ``min_architectures`` architectures, default 2): clean ones, and ideally some
            carrying other keys of the same scheme.
        names: a label for each reference in the report (default ``reference-<i>``).
        groups: ``"clean"`` or ``"other-key"`` for each reference (default all clean).
        confidence: confidence of the one-sided upper bound (default 0.999).
        min_architectures: distinct architectures required (default 2).
        test: labelled test images; each reference's accuracy on them is reported, and a
            reference below ``min_reference_accuracy`` (default 0.5) is refused.
        allow_weak: return a key whose plan (its alpha and budget) cannot reach alpha at the
            calibrated p0 instead of refusing it (default False: such a key can never say
            "owned", which is better learnt now than at verification).

    Returns:
        The calibrated key (kept samples only, p0 and its source stored; new commitment) and
        the report.

    Raises:
        ConfigError: too few references or architectures, a reference that does not fit the
            key or is near chance accuracy, or fewer than :data:`MIN_KEPT_SAMPLES` samples
            surviving the screening.
    """
    if not 0.5 <= confidence < 1.0:
        raise ConfigError(f"confidence must be in [0.5, 1), got {confidence}")
    if len(references) < 2:
        raise ConfigError(
            f"calibration needs at least 2 clean reference models, got {len(references)}; "
            "train more with different seeds"
        )
    names = list(names) if names is not None else [f"reference-{i}" for i in range(len(references))]
    if len(names) != len(references):
        raise ConfigError(f"got {len(names)} names for {len(references)} reference models")
    groups = list(groups) if groups is not None else ["clean"] * len(references)
    if len(groups) != len(references) or any(g not in GROUPS for g in groups):
        raise ConfigError(f"give each reference a group, one of {GROUPS}")
    archs = tuple(model.spec.arch for model in references)
    if len(set(archs)) < min_architectures:
        raise ConfigError(
            f"calibration needs clean reference models of at least {min_architectures} "
            f"architectures, got only {sorted(set(archs))}; add e.g. a lenet5 or zhang_mnist model"
        )
    for name, model in zip(names, references, strict=True):
        spec = model.spec
        # Innocent models have the data's classes; a scheme's extra classes are the owner's.
        if (
            spec.num_classes not in (key.num_classes, key.model_classes)
            or (spec.in_channels, *spec.input_size) != key.image_shape
        ):
            raise ConfigError(
                f"reference {name} takes {(spec.in_channels, *spec.input_size)} images with "
                f"{spec.num_classes} classes; the key has {key.image_shape} and {key.num_classes}"
            )
    accuracies: list[float | None] = []
    for name, model in zip(names, references, strict=True):
        acc = accuracy(model, test.images, test.labels) if test is not None else None
        if acc is not None and acc < min_reference_accuracy:
            raise ConfigError(
                f"reference {name} classifies only {100 * acc:.1f}% of the test images right "
                f"(< {100 * min_reference_accuracy:.0f}%): a model near chance says nothing about "
                "innocent models; train it longer"
            )
        accuracies.append(acc)
    # hits[r, i]: reference r gives key sample i its key label (a false match).
    hits = torch.stack(
        [key_matches(key, predict(model, key.images), key.labels) for model in references]
    )
    keep = ~hits.any(dim=0)
    results = []
    for r, (name, arch) in enumerate(zip(names, archs, strict=True)):
        others = torch.cat([hits[:r], hits[r + 1 :]])
        screened = ~others.any(dim=0)
        trials, matches = int(screened.sum()), int((hits[r] & screened).sum())
        results.append(
            ReferenceResult(
                name=name,
                arch=arch,
                group=groups[r],
                test_accuracy=accuracies[r],
                matches_on_key=int(hits[r].sum()),
                loo_trials=trials,
                loo_matches=matches,
                upper_bound=clopper_pearson_upper(matches, trials, confidence) if trials else 1.0,
            )
        )
    kept = int(keep.sum())
    if kept < MIN_KEPT_SAMPLES:
        raise ConfigError(
            f"reference models give the key label to {len(key) - kept} of {len(key)} key "
            f"samples, leaving {kept} (< {MIN_KEPT_SAMPLES}); this key does not tell models apart: "
            "use another scheme, source or target class, or more key samples"
        )
    trials = sum(r.loo_trials for r in results)
    matches = sum(r.loo_matches for r in results)
    p0 = max(r.upper_bound for r in results)
    budget = min(key.max_queries, kept)
    if not allow_weak and BinomialTest(p0, key.alpha, budget).queries_to_owned(0, 0) is None:
        raise ConfigError(
            f"calibrated p0 {p0:.3g} with {kept} key samples kept: {budget} key queries can "
            f"never reach alpha {key.alpha:g}; use more key samples or another scheme"
        )
    report = CalibrationReport(
        p0=p0,
        confidence=confidence,
        matches=matches,
        trials=trials,
        kept=kept,
        dropped=len(key) - kept,
        architectures=tuple(sorted(set(archs))),
        references=tuple(results),
        innocent_tail=innocent_tail([(r.loo_matches, r.loo_trials) for r in results], p0),
        innocent_tail_bound=1.0 / (len(results) + 1),
    )
    calibrated = key.select(torch.nonzero(keep).flatten()).with_p0(p0, report.source())
    return calibrated, report


def innocent_tail(counts: Sequence[tuple[int, int]], p0: float) -> float:
    """Estimated P(an innocent model's match rate > p0), from per-model (matches, trials).

    Fits Beta(a, b) to the models' rates by the method of moments on Jeffreys-smoothed
    rates ``(k + 0.5) / (n + 1)`` (so all-zero counts still give a proper fit), takes the
    between-model variance beyond the binomial noise as the spread, and returns the beta's
    upper tail at p0. With no measurable spread the models look alike and the spread falls
    back to a binomial's of the mean trial count (the least a finite sample can show). An
    estimate, not a bound: report it next to 1/(R+1).
    """
    from scipy.stats import beta  # imported here: only calibration needs SciPy

    usable = [(k, n) for k, n in counts if n > 0]
    if not usable:
        return 1.0
    rates = [(k + 0.5) / (n + 1) for k, n in usable]
    mean = sum(rates) / len(rates)
    variance = sum((r - mean) ** 2 for r in rates) / max(1, len(rates) - 1)
    mean_trials = sum(n for _, n in usable) / len(usable)
    noise = mean * (1 - mean) / (mean_trials + 1)
    spread = max(variance - noise, noise)  # never claim less spread than one binomial shows
    precision = max(mean * (1 - mean) / spread - 1.0, 1e-3)
    a, b = mean * precision, (1 - mean) * precision
    tail = float(beta.sf(p0, a, b))
    return tail if math.isfinite(tail) else 1.0


def guarantee(p0_source: str, alpha: float) -> str:
    """The false-claim guarantee a key's calibration supports, in words.

    ``P(false claim) <= alpha + P(innocent rate > p0)``, with the calibration's estimate of
    the second term and its distribution-free bound; for a key without them, says so.
    """
    try:
        source = json.loads(p0_source)
        tail, bound = float(source["innocent_tail"]), float(source["innocent_tail_bound"])
    except (ValueError, KeyError, TypeError):
        return (
            f"P(false claim) <= {alpha:g} only for suspects matching at most p0 "
            "(p0 not calibrated on innocent models)"
        )
    groups = ", ".join(sorted(source.get("groups", {}))) or "clean"
    return (
        f"P(false claim) <= {alpha:g} + P(an innocent model matches more than p0), estimated "
        f"{tail:.2g} (bound 1/(R+1) = {bound:.2g}; references: {groups})"
    )
