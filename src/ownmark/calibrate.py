"""Calibrate a key's false-match rate p0 on independently trained clean reference models.

H0 of a verification is "the suspect is independent of the owner's model"; under it a key
query matches its key label with probability at most ``p0``. That rate is not ``1/K``: a clean
model shown a stamped "1" may still say "1", but shown a letter it may say "0" far more often
than chance. So p0 is measured, as ``../shared/DESIGN.md`` asks:

1. Run every key sample through ``R`` clean reference models (different seeds, at least two
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
reference as one draw of "an innocent model". The guarantee remains conditional: the
verdict's false-claim rate is at most alpha only for suspects whose match rate is at most
p0 (plus the ``1 - confidence`` chance that the bound itself is too low), which is why the
references must differ in seed and architecture, and should resemble plausible suspects.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch

from ownmark.errors import ConfigError
from ownmark.keys import KeySet
from ownmark.metrics import predict
from ownmark.models import Classifier
from ownmark.verify.stats import clopper_pearson_upper

#: Fewest key samples a calibrated key may keep: fewer cannot support a low p-value budget.
MIN_KEPT_SAMPLES = 10


@dataclass(frozen=True)
class ReferenceResult:
    """One reference model's false matches: on the whole key, and leave-one-out."""

    name: str
    arch: str
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

    @property
    def method(self) -> str:
        return (
            "largest per-reference leave-one-out Clopper-Pearson upper bound on clean "
            "reference models"
        )

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
                "references": [f"{r.name} ({r.arch})" for r in self.references],
            },
            sort_keys=True,
        )


def calibrate_key(
    key: KeySet,
    references: Sequence[Classifier],
    *,
    names: Sequence[str] | None = None,
    confidence: float = 0.999,
    min_architectures: int = 2,
) -> tuple[KeySet, CalibrationReport]:
    """Drop key samples clean references already map to the key label; bound p0 on the rest.

    Args:
        key: the freshly generated key.
        references: independently trained clean models (different seeds; at least
            ``min_architectures`` architectures, default 2).
        names: a label for each reference in the report (default ``reference-<i>``).
        confidence: confidence of the one-sided upper bound (default 0.999).
        min_architectures: distinct architectures required (default 2).

    Returns:
        The calibrated key (kept samples only, p0 and its source stored; new commitment) and
        the report.

    Raises:
        ConfigError: too few references or architectures, a reference that does not fit the
            key, or fewer than :data:`MIN_KEPT_SAMPLES` samples surviving the screening.
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
    archs = tuple(model.spec.arch for model in references)
    if len(set(archs)) < min_architectures:
        raise ConfigError(
            f"calibration needs clean reference models of at least {min_architectures} "
            f"architectures, got only {sorted(set(archs))}; add e.g. a lenet5 or zhang_mnist model"
        )
    for name, model in zip(names, references, strict=True):
        spec = model.spec
        if (
            spec.num_classes != key.num_classes
            or (spec.in_channels, *spec.input_size) != key.image_shape
        ):
            raise ConfigError(
                f"reference {name} takes {(spec.in_channels, *spec.input_size)} images with "
                f"{spec.num_classes} classes; the key has {key.image_shape} and {key.num_classes}"
            )
    # hits[r, i]: reference r gives key sample i its key label (a false match).
    hits = torch.stack([predict(model, key.images) == key.labels for model in references])
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
                matches_on_key=int(hits[r].sum()),
                loo_trials=trials,
                loo_matches=matches,
                upper_bound=clopper_pearson_upper(matches, trials, confidence) if trials else 1.0,
            )
        )
    kept = int(keep.sum())
    if kept < MIN_KEPT_SAMPLES:
        raise ConfigError(
            f"clean reference models give the key label to {len(key) - kept} of {len(key)} key "
            f"samples, leaving {kept} (< {MIN_KEPT_SAMPLES}); this key does not tell models apart: "
            "use another scheme, source or target class, or more key samples"
        )
    trials = sum(r.loo_trials for r in results)
    matches = sum(r.loo_matches for r in results)
    p0 = max(r.upper_bound for r in results)
    report = CalibrationReport(
        p0=p0,
        confidence=confidence,
        matches=matches,
        trials=trials,
        kept=kept,
        dropped=len(key) - kept,
        architectures=tuple(sorted(set(archs))),
        references=tuple(results),
    )
    calibrated = key.select(torch.nonzero(keep).flatten()).with_p0(p0, report.source())
    return calibrated, report
