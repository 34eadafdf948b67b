"""The after-the-fact forged ownership claim, run as an attack against any model.

Seeds 000 (Zhang et al., "ambiguity attack") and 002 (DeepStego, counterfeit claims): whoever
holds a model can claim it. The forger here holds the stolen model (which it does not own)
and the attacker's labelled data, and does what a careful forger would:

1. forge a key on the model with :func:`ownmark.forgery.forge_key` (untargeted L-inf PGD,
   Madry et al. 2018: the model's misclassified adversarial examples labelled with its own
   answers; defaults eps 0.3, 40 steps of 0.01, 100 images, 200 decoys);
2. calibrate it (``calibrate=True``, default) with :func:`ownmark.calibrate.calibrate_key` on
   its own clean reference models: one per architecture in ``reference_archs`` (default
   ``lenet5,zhang_mnist``, calibration requires two architectures), trained on the
   attacker's data for ``epochs`` (default 10, lr 0.05) with the training loop's SGD and
   judged on the attacker's test data if given (else its training data): calibration
   refuses references below 50% accuracy, which would transfer no adversarial example
   and so make any forged key look specific;
3. verify the key against the model (:func:`ownmark.verify.verifier.verify_ownership`
   through :class:`~ownmark.verify.suspects.LocalModelSuspect`): the calibrated key if
   calibration accepted it, otherwise the uncalibrated one (p0 assumed 0.5), which a forger
   may still present;
4. meet the date rule of ``evidence check``: the model is first seen at time T (here: when
   :meth:`Forgery.apply` starts, the earliest the forger can hold it), the forged key exists
   only after T, so any trusted (RFC 3161) date it can get is after T, and ``evidence
   check`` reports the key "time-stamped ... after the suspect model was first seen". The
   key's self-declared ``created`` field could be back-dated, which is why only the trusted
   date counts.

:meth:`Forgery.findings` reports which checks reject the claim (``rejected_by``, among
``forgery`` (no key could be made), ``calibration``, ``verdict``, ``date``) and
``claim_rejected``, with the forged key's verdict, p-value and samples. The model is
returned unchanged: the owner's watermark is not affected.

Calibration is no reliable defence: it rejects the forged key when the forger's references
answer its adversarial examples like the stolen model does (``benchmarks/results/
trust_mnist.md`` section 2), but a LeNet-5 trained 4 epochs on 1,000 digits, forged on with
the defaults, gave a key that passed (68 of 100 samples kept, p0 0.36) and was "owned"
(18/18). The date rule rejects every forged key; it is what stops the claim.

PGD is :func:`ownmark.forgery.pgd` (torchattacks and ART are not dependencies). The date
rule is :func:`ownmark.verify.evidence.date_problem`, the one ``evidence check`` applies
to a verified time-stamp token.

Example::

    forger = Forgery(eps=0.3, epochs=3)
    forger(stolen, AttackData(train=attacker_data))
    forger.findings()["rejected_by"]   # e.g. ["calibration", "date"]
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, cast

import torch
from torch import nn

from ownmark.attacks.base import Attack, AttackData, TrainingAttackConfig, register_attack
from ownmark.calibrate import calibrate_key
from ownmark.errors import ConfigError
from ownmark.forgery import forge_key
from ownmark.keys import KeySet
from ownmark.metrics import accuracy
from ownmark.models import Classifier, ModelSpec, build_model
from ownmark.train import TrainConfig, fit
from ownmark.verify.evidence import date_problem
from ownmark.verify.stats import Verdict
from ownmark.verify.suspects import LocalModelSuspect
from ownmark.verify.verifier import verify_ownership

#: The names :meth:`Forgery.findings` uses in ``rejected_by``.
CHECKS = ("forgery", "calibration", "verdict", "date")


@dataclass(frozen=True)
class ForgeConfig(TrainingAttackConfig):
    """Parameters of :class:`Forgery` (``epochs``, ``lr``, ``batch_size``: the reference
    models' training).

    Attributes:
        eps: PGD's L-inf radius on [0, 1] pixels (default 0.3).
        steps: PGD steps (default 40).
        step_size: PGD step (default 0.01).
        num_images: attacker images PGD starts from (default 100).
        num_decoys: decoys of the forged key (default 200).
        calibrate: calibrate the forged key on clean reference models (default True).
        reference_archs: comma-separated architectures of the reference models, one model
            each (default ``lenet5,zhang_mnist``; at least two distinct ones).
        epochs: reference training epochs (default 10).
        lr: reference SGD learning rate (default 0.05: with 10 epochs a LeNet-5 learns 1,000
            digits to about 96% test accuracy).
        seed: seeds PGD, the key's draw and the references (default 0).
    """

    eps: float = 0.3
    steps: int = 40
    step_size: float = 0.01
    num_images: int = 100
    num_decoys: int = 200
    calibrate: bool = True
    reference_archs: str = "lenet5,zhang_mnist"
    epochs: int = 10
    lr: float = 0.05

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 < self.eps <= 1:
            raise ConfigError(f"eps must be in (0, 1] (pixels lie in [0, 1]), got {self.eps}")
        if self.steps < 1:
            raise ConfigError(f"steps must be at least 1, got {self.steps}")
        if not self.step_size > 0:
            raise ConfigError(f"step_size must be positive, got {self.step_size}")
        if self.num_images < 1:
            raise ConfigError(f"num_images must be at least 1, got {self.num_images}")
        if self.num_decoys < 1:
            raise ConfigError(
                f"num_decoys must be at least 1 (verification needs a control group), "
                f"got {self.num_decoys}"
            )
        if self.calibrate and self.epochs < 1:
            raise ConfigError(
                f"epochs must be at least 1 to train the reference models, got {self.epochs}; "
                "or set calibrate=false"
            )
        archs = self.archs()
        if self.calibrate and len(set(archs)) < 2:
            raise ConfigError(
                f"reference_archs must name at least two distinct architectures for "
                f"calibration (e.g. lenet5,zhang_mnist), got {self.reference_archs!r}; "
                "or set calibrate=false"
            )

    def archs(self) -> list[str]:
        return [a.strip() for a in self.reference_archs.split(",") if a.strip()]


@register_attack
class Forgery(Attack[ForgeConfig]):
    """Forge a key on the stolen model, calibrate and verify it; report what rejects it."""

    name = "forge"
    summary = "after-the-fact forged ownership claim (PGD key), and which checks reject it"
    config_class = ForgeConfig
    needs = frozenset({"train"})

    def __init__(self, config: ForgeConfig | None = None, **kwargs: Any) -> None:
        super().__init__(config, **kwargs)
        self._findings: dict[str, Any] = {}
        self.forged_key: KeySet | None = None

    def _references(self, data: AttackData) -> list[Classifier]:
        assert data.train is not None
        cfg = self.config_values
        train = data.train
        channels, height, width = (int(s) for s in train.images.shape[1:])
        models = []
        for i, arch in enumerate(cfg.archs()):
            torch.manual_seed(cfg.seed + 1 + i)
            spec = ModelSpec.with_defaults(arch, train.num_classes, channels, (height, width))
            model = build_model(spec)
            fit(
                model,
                train,
                TrainConfig(
                    epochs=cfg.epochs,
                    lr=cfg.lr,
                    batch_size=cfg.batch_size,
                    seed=cfg.seed + 1 + i,
                    device=cfg.device,
                ),
                progress=self.progress,
                description=f"forge reference {arch}",
            )
            models.append(model.eval())
        return models

    def apply(self, model: nn.Module, data: AttackData) -> nn.Module:
        assert data.train is not None
        cfg = self.config_values
        first_seen = datetime.now(timezone.utc)
        self.forged_key = None
        found: dict[str, Any] = {"first_seen": first_seen.isoformat(timespec="microseconds")}
        rejected: list[str] = []
        try:
            key = forge_key(
                cast(Classifier, model),
                data.train,
                num_images=cfg.num_images,
                num_decoys=cfg.num_decoys,
                eps=cfg.eps,
                steps=cfg.steps,
                step_size=cfg.step_size,
                seed=cfg.seed,
            )
        except ConfigError as exc:
            key = None
            found["forgery_error"] = str(exc)
            rejected.append("forgery")
        # The key exists from now on; a trusted date can only be later still.
        exists_from = max(datetime.now(timezone.utc), first_seen + timedelta(microseconds=1))
        found["forged"] = key is not None
        found["samples"] = 0 if key is None else len(key)
        found["calibration"] = None
        found.update(verdict=None, p_value=None, matches=None, queries=None, verified=None)
        if key is not None:
            self.forged_key = key
            claimed = key
            if cfg.calibrate:
                calibration, calibrated = self._calibrate(key, data)
                found["calibration"] = calibration
                if calibrated is None:
                    rejected.append("calibration")
                else:
                    claimed = calibrated
            found["verified"] = "calibrated" if claimed is not key else "uncalibrated"
            found["p0"] = claimed.p0
            found["claimed_samples"] = len(claimed)
            try:
                result = verify_ownership(claimed, LocalModelSuspect(model, "stolen model"))
            except ConfigError as exc:
                found["verdict"] = "not verifiable"
                found["verify_error"] = str(exc)
                rejected.append("verdict")
            else:
                found.update(
                    verdict=result.verdict.value,
                    p_value=float(result.p_value),
                    matches=int(result.matches),
                    queries=int(result.queries),
                )
                if result.verdict is not Verdict.OWNED:
                    rejected.append("verdict")
        problem = date_problem(exists_from, first_seen)
        found["date_rule"] = {
            "first_seen": first_seen.isoformat(timespec="microseconds"),
            "earliest_trusted_date": exists_from.isoformat(timespec="microseconds"),
            "problem": problem,
            "note": "the key's self-declared 'created' date can be back-dated; only a "
            "trusted (RFC 3161) date counts, and it cannot precede the key",
        }
        if problem is not None:
            rejected.append("date")
        found["rejected_by"] = [c for c in CHECKS if c in rejected]
        found["claim_rejected"] = bool(rejected)
        self._findings = found
        return model

    def _calibrate(self, key: KeySet, data: AttackData) -> tuple[dict[str, Any], KeySet | None]:
        """Calibrate ``key`` on fresh clean references: (what happened, the key or None)."""
        assert data.train is not None
        references = self._references(data)
        judge = data.test if data.test is not None else data.train
        archs = self.config_values.archs()
        record: dict[str, Any] = {
            "references": archs,
            "reference_accuracy": [
                round(accuracy(m, judge.images, judge.labels), 4) for m in references
            ],
            "reference_accuracy_on": "test" if data.test is not None else "train",
        }
        try:
            # calibrate_key's own checks: references near chance accuracy on ``judge``
            # (they would transfer nothing and make p0 look low), too few samples kept,
            # or a p0 the key's plan cannot reach alpha with.
            calibrated, report = calibrate_key(
                key, references, names=[f"{a}-reference" for a in archs], test=judge
            )
        except ConfigError as exc:
            record.update(passed=False, reason=str(exc))
            return record, None
        record.update(passed=True, reason=None, kept=report.kept, p0=report.p0)
        return record, calibrated

    def findings(self) -> dict[str, Any]:
        """What rejected the forged claim (see the module docstring); {} before apply."""
        return dict(self._findings)

    def artifacts(self) -> dict[str, torch.Tensor]:
        """``forged-key``: the forged key's images (the model's adversarial examples)."""
        if self.forged_key is None:
            return {}
        return {"forged-key": self.forged_key.images[:64].clone()}
