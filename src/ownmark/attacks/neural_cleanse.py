"""Neural Cleanse (Wang et al., "Neural Cleanse: Identifying and Mitigating Backdoor Attacks in
Neural Networks", IEEE S&P 2019): reverse-engineer a trigger for every class, flag the classes
whose trigger is anomalously small, then unlearn the flagged triggers.

A watermark key that maps many images to one label is, to Neural Cleanse, a backdoor: the
attacker who stole the model runs the detector on it and, if the key label stands out,
fine-tunes the shortcut away.

1. **Reverse engineering** (paper section 4). For every output class ``y`` of the model, a mask
   ``m`` (H×W, shared by the channels) and a pattern ``p`` (C×H×W) are optimised so that
   ``x' = (1 - m)·x + m·p`` is classified ``y`` for the attacker's clean images, minimising
   ``cross_entropy(model(x'), y) + cost·|m|_1``. Both are parametrised through a sigmoid, so
   they stay in [0, 1] (the pattern in the model's input range). ``steps`` Adam steps (lr
   ``mask_lr``, betas (0.5, 0.9) as the authors' code) on random batches of ``batch_size``
   labelled train images; the model is in eval mode and its weights are frozen meanwhile. The
   default of 300 steps takes about 1.6 s per class for LeNet-5 on 28×28 digits on one CPU
   core; the masks then shrink only slowly (a planted 4×4 patch's class: L1 about 18-22 at
   200-500 steps, the clean classes 60-165).

   The cost follows the authors' schedule in a simplified form. Every ``check_every`` steps the
   share of the checked window's images classified ``y`` is compared with ``target_success``
   (0.99): after ``patience`` successive checks at or above it the cost is multiplied by
   ``cost_multiplier`` (2), after ``patience`` successive checks below it divided by
   ``cost_multiplier ** 1.5``, starting from ``init_cost`` (1e-3). The trigger kept for a
   class is the one with the smallest mask L1 norm among the checks that reached
   ``target_success``; if no check did, the last one. Its success rate is then measured on
   (at most 1,000 of) the attacker's images whose label is not ``y``.

2. **Detection** (section 4). With ``L`` the kept masks' L1 norms, the anomaly index of a class
   is ``|L - median(L)| / (1.4826 · MAD)`` (MAD: median absolute deviation; floored at 1e-9 so
   equal norms give finite indices). Only classes *below* the median are flagged, when their
   index exceeds ``anomaly_threshold`` (the paper's 2.0). On a small, weak model the clean
   classes' norms spread widely, so even a planted patch may score just above or below 2 (the
   test model's: 2.0-2.5 depending on seed and steps), while its mask is clearly the smallest.

3. **Mitigation by unlearning** (section 6.2). The model is fine-tuned (``epochs``, SGD, lr
   ``lr``, :func:`ownmark.train.fit`) on the attacker's labelled data where a seeded random
   ``unlearn_ratio`` share (0.2, the paper's 20%) of the images carries one of the unlearned
   classes' reversed triggers (chosen at random per image) *with the image's correct label*.
   Which classes are unlearned is ``unlearn``:

   - ``flagged`` (default): the flagged classes; if none is flagged the model is returned as
     it was (the defender found no backdoor, so it has nothing to unlearn);
   - ``top``: the flagged classes, or, if none, the below-median class with the highest
     anomaly index (the most suspicious one; unlearning is always done);
   - ``none``: detection only; the model is returned as it was.

:meth:`NeuralCleanse.findings` reports the norms, indices, flagged classes, trigger success
rates and what was unlearned; :meth:`NeuralCleanse.artifacts` the reversed triggers
(``mask·pattern``) and masks as images; :meth:`NeuralCleanse.score` whether the owner's key
label was flagged.

Why written here: the Adversarial Robustness Toolbox's ``NeuralCleanse`` defence works on Keras
classifiers only, so it does not apply to ownmark's PyTorch models (and ART is not a
dependency).

Example::

    cleansed = NeuralCleanse(steps=300, epochs=2)(model, AttackData(train=first, test=second))
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ownmark.attacks.base import Attack, AttackData, TrainingAttackConfig, register_attack
from ownmark.data.base import ImageDataset
from ownmark.errors import ConfigError
from ownmark.keys import KeySet
from ownmark.metrics import to_float_images
from ownmark.train import fit

#: What ``unlearn`` may be.
UNLEARN_MODES = ("flagged", "top", "none")
#: Consistency constant turning the MAD into a standard deviation for normal data.
MAD_SCALE = 1.4826
#: Images the kept trigger's success rate is measured on, at most.
SUCCESS_SAMPLES = 1000


@dataclass(frozen=True)
class NeuralCleanseConfig(TrainingAttackConfig):
    """Parameters of :class:`NeuralCleanse` (``seed`` seeds the initial masks, the batches,
    the images to stamp and the fine-tuning).

    Attributes:
        steps: Adam steps of the reverse engineering per class, >= 1 (default 300).
        mask_batch_size: images per reverse-engineering step, >= 1 (default 32, the
            authors' mini-batch).
        mask_lr: Adam learning rate of the mask and pattern logits, > 0 (default 0.2).
        init_cost: initial weight of the mask's L1 norm, > 0 (default 1e-3).
        cost_multiplier: the cost's up factor (down: its power 1.5), > 1 (default 2).
        patience: successive checks before the cost changes, >= 1 (default 3).
        check_every: steps per check of the trigger's success, >= 1 (default 5).
        target_success: success rate a kept trigger must reach, in (0, 1] (default 0.99).
        anomaly_threshold: anomaly index above which a class is flagged, > 0 (default 2.0).
        unlearn: ``flagged`` (default), ``top`` or ``none`` (see the module docs).
        unlearn_ratio: share of the fine-tuning images stamped with a reversed trigger, in
            (0, 1] (default 0.2).
        epochs: fine-tuning passes of the unlearning, >= 0 (default 2; 0: detection only).
        lr: SGD learning rate of the unlearning (default 0.01).
        batch_size: batch of the unlearning (default 128).
        device: torch device (default ``cpu``).
    """

    steps: int = 300
    mask_batch_size: int = 32
    mask_lr: float = 0.2
    init_cost: float = 1e-3
    cost_multiplier: float = 2.0
    patience: int = 3
    check_every: int = 5
    target_success: float = 0.99
    anomaly_threshold: float = 2.0
    unlearn: str = "flagged"
    unlearn_ratio: float = 0.2
    epochs: int = 2

    def __post_init__(self) -> None:
        problems = [
            (self.steps >= 1, f"steps must be >= 1, got {self.steps}"),
            (
                self.mask_batch_size >= 1,
                f"mask_batch_size must be >= 1, got {self.mask_batch_size}",
            ),
            (self.mask_lr > 0, f"mask_lr must be > 0, got {self.mask_lr}"),
            (self.init_cost > 0, f"init_cost must be > 0, got {self.init_cost}"),
            (
                self.cost_multiplier > 1,
                f"cost_multiplier must be > 1, got {self.cost_multiplier}",
            ),
            (self.patience >= 1, f"patience must be >= 1, got {self.patience}"),
            (self.check_every >= 1, f"check_every must be >= 1, got {self.check_every}"),
            (
                0 < self.target_success <= 1,
                f"target_success must lie in (0, 1], got {self.target_success}",
            ),
            (
                self.anomaly_threshold > 0,
                f"anomaly_threshold must be > 0, got {self.anomaly_threshold}",
            ),
            (
                self.unlearn in UNLEARN_MODES,
                f"unlearn must be one of {', '.join(UNLEARN_MODES)}, got {self.unlearn!r}",
            ),
            (
                0 < self.unlearn_ratio <= 1,
                f"unlearn_ratio must lie in (0, 1], got {self.unlearn_ratio}",
            ),
        ]
        for ok, message in problems:
            if not ok:
                raise ConfigError(f"neural-cleanse: {message}")
        super().__post_init__()


@dataclass(frozen=True)
class ReversedTrigger:
    """The trigger Neural Cleanse reverse-engineered for one class.

    Attributes:
        label: the class.
        mask: float (H, W) in [0, 1].
        pattern: float (C, H, W) in [0, 1].
        l1: the mask's L1 norm.
        success: share of the attacker's other-class images the trigger sends to ``label``.
        reached: whether a check reached ``target_success`` (else the last trigger is kept).
        final_cost: the L1 weight when the optimisation stopped.
    """

    label: int
    mask: torch.Tensor
    pattern: torch.Tensor
    l1: float
    success: float
    reached: bool
    final_cost: float

    def apply(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 ``images`` (N×C×H×W) with the trigger blended in, rounded to uint8."""
        x = to_float_images(images)
        mask = self.mask.to(x.device)
        blended = (1 - mask) * x + mask * self.pattern.to(x.device)
        return blended.mul(255).round_().clamp_(0, 255).to(torch.uint8)


@dataclass(frozen=True)
class Detection:
    """Anomaly indices of the masks' L1 norms (paper section 4)."""

    norms: list[float]
    indices: list[float]
    median: float
    mad: float
    flagged: list[int] = field(default_factory=list)


def anomaly_indices(norms: list[float], threshold: float) -> Detection:
    """MAD anomaly indices of ``norms``; classes below the median above ``threshold`` flagged."""
    values = torch.tensor(norms, dtype=torch.float64)
    # The mean of the two middle values for an even count, like numpy's median.
    median = float(values.quantile(0.5))
    mad = float((values - median).abs().quantile(0.5))
    scale = MAD_SCALE * max(mad, 1e-9)
    indices = [abs(v - median) / scale for v in norms]
    flagged = [
        label
        for label, (v, index) in enumerate(zip(norms, indices, strict=True))
        if v < median and index > threshold
    ]
    return Detection(list(norms), indices, median, mad, flagged)


def reverse_engineer(
    model: nn.Module,
    images: torch.Tensor,
    label: int,
    config: NeuralCleanseConfig,
    generator: torch.Generator,
) -> ReversedTrigger:
    """Optimise a mask and pattern sending ``images`` (uint8, the attacker's) to ``label``.

    ``model`` must be in eval mode with frozen weights (see :meth:`NeuralCleanse.apply`).
    """
    device = next(iter(model.parameters())).device
    _, channels, height, width = images.shape
    # Random start like the authors' code (uniform mask and pattern), in logit space.
    start_mask = torch.rand(height, width, generator=generator).clamp(0.01, 0.99)
    start_pattern = torch.rand(channels, height, width, generator=generator).clamp(0.01, 0.99)
    mask_logit = torch.logit(start_mask).to(device).requires_grad_(True)
    pattern_logit = torch.logit(start_pattern).to(device).requires_grad_(True)
    optimiser = torch.optim.Adam([mask_logit, pattern_logit], lr=config.mask_lr, betas=(0.5, 0.9))
    target = torch.full((config.mask_batch_size,), label, dtype=torch.int64, device=device)

    cost = config.init_cost
    up = down = 0
    hits = seen = 0
    best: tuple[float, torch.Tensor, torch.Tensor] | None = None
    for step in range(1, config.steps + 1):
        rows = torch.randint(len(images), (config.mask_batch_size,), generator=generator)
        x = to_float_images(images[rows].to(device))
        mask = torch.sigmoid(mask_logit)
        pattern = torch.sigmoid(pattern_logit)
        out = model((1 - mask) * x + mask * pattern)
        l1 = mask.sum()
        loss = F.cross_entropy(out, target) + cost * l1
        optimiser.zero_grad()
        loss.backward()  # type: ignore[no-untyped-call]
        optimiser.step()
        hits += int((out.argmax(dim=1) == label).sum())
        seen += len(rows)
        if step % config.check_every and step != config.steps:
            continue
        success = hits / seen
        hits = seen = 0
        if success >= config.target_success:
            norm = float(l1.detach())
            if best is None or norm < best[0]:
                best = (norm, mask.detach().clone(), pattern.detach().clone())
            up, down = up + 1, 0
        else:
            up, down = 0, down + 1
        if up >= config.patience:
            up, cost = 0, cost * config.cost_multiplier
        elif down >= config.patience:
            down, cost = 0, cost / config.cost_multiplier**1.5

    if best is None:
        kept_mask = torch.sigmoid(mask_logit).detach()
        kept_pattern = torch.sigmoid(pattern_logit).detach()
    else:
        kept_mask, kept_pattern = best[1], best[2]
    return ReversedTrigger(
        label=label,
        mask=kept_mask.cpu(),
        pattern=kept_pattern.cpu(),
        l1=float(kept_mask.sum()),
        success=0.0,  # measured by the caller on the images of the other classes
        reached=best is not None,
        final_cost=cost,
    )


@torch.no_grad()
def trigger_success(model: nn.Module, trigger: ReversedTrigger, images: torch.Tensor) -> float:
    """Share of uint8 ``images`` that ``model`` classifies as the trigger's label once stamped
    (float blend, not rounded, as optimised)."""
    if len(images) == 0:
        return 0.0
    device = next(iter(model.parameters())).device
    mask = trigger.mask.to(device)
    pattern = trigger.pattern.to(device)
    hits = 0
    for start in range(0, len(images), 512):
        x = to_float_images(images[start : start + 512].to(device))
        hits += int((model((1 - mask) * x + mask * pattern).argmax(dim=1) == trigger.label).sum())
    return hits / len(images)


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Float images in [0, 1] → uint8 0..255."""
    return images.mul(255).round().clamp(0, 255).to(torch.uint8)


@register_attack
class NeuralCleanse(Attack[NeuralCleanseConfig]):
    """Reverse-engineer per-class triggers, flag outliers, unlearn them (Wang et al. 2019)."""

    name = "neural-cleanse"
    summary = (
        "reverse-engineer a trigger per class, flag anomalously small ones, unlearn them "
        "(Neural Cleanse, Wang et al. 2019)"
    )
    config_class = NeuralCleanseConfig
    needs = frozenset({"train"})

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.triggers: list[ReversedTrigger] = []
        self.detection: Detection | None = None
        self.unlearned: list[int] = []
        self.stamped: int = 0
        self.seconds_per_class: float = 0.0

    def apply(self, model: nn.Module, data: AttackData) -> nn.Module:
        assert data.train is not None
        cfg = self.config_values
        if len(data.train) == 0:
            raise ConfigError("neural-cleanse needs at least one labelled train image")
        model.to(torch.device(cfg.device))
        images = data.train.images
        labels = data.train.labels
        num_classes = self._num_classes(model, images)

        generator = torch.Generator().manual_seed(cfg.seed)
        was_training = model.training
        grads = [param.requires_grad for param in model.parameters()]
        model.eval()
        model.requires_grad_(False)
        started = time.perf_counter()
        try:
            triggers = []
            for label in range(num_classes):
                trigger = reverse_engineer(model, images, label, cfg, generator)
                others = images[labels != label][:SUCCESS_SAMPLES]
                success = trigger_success(model, trigger, others)
                triggers.append(dataclasses.replace(trigger, success=success))
        finally:
            for param, grad in zip(model.parameters(), grads, strict=True):
                param.requires_grad_(grad)
            model.train(was_training)
        self.seconds_per_class = (time.perf_counter() - started) / num_classes
        self.triggers = triggers
        self.detection = anomaly_indices([t.l1 for t in triggers], cfg.anomaly_threshold)
        self.unlearned = self._to_unlearn(self.detection)
        self.stamped = 0
        if self.unlearned and cfg.epochs > 0:
            self._unlearn(model, data)
        return model

    @staticmethod
    @torch.no_grad()
    def _num_classes(model: nn.Module, images: torch.Tensor) -> int:
        device = next(iter(model.parameters())).device
        was_training = model.training
        model.eval()
        try:
            return int(model(to_float_images(images[:1].to(device))).shape[1])
        finally:
            model.train(was_training)

    def _to_unlearn(self, detection: Detection) -> list[int]:
        mode = self.config_values.unlearn
        if mode == "none":
            return []
        if detection.flagged or mode == "flagged":
            return list(detection.flagged)
        below = [
            label for label, norm in enumerate(detection.norms) if norm < detection.median
        ] or list(range(len(detection.norms)))
        return [max(below, key=lambda label: (detection.indices[label], -label))]

    def _unlearn(self, model: nn.Module, data: AttackData) -> None:
        assert data.train is not None
        cfg = self.config_values
        train = data.train
        generator = torch.Generator().manual_seed(cfg.seed + 1)
        count = max(1, round(cfg.unlearn_ratio * len(train)))
        chosen = torch.randperm(len(train), generator=generator)[:count]
        which = torch.randint(len(self.unlearned), (count,), generator=generator)
        images = train.images.clone()
        for slot, label in enumerate(self.unlearned):
            rows = chosen[which == slot]
            images[rows] = self.triggers[label].apply(images[rows])
        self.stamped = count
        stamped = ImageDataset(
            images=images,
            labels=train.labels,
            classes=train.classes,
            name=f"{train.name}[neural-cleanse: {count} stamped]",
        )
        fit(
            model,
            stamped,
            cfg.train_config(),
            test=data.test,
            progress=self.progress,
            description=f"attack {self.name}",
        )

    def findings(self) -> dict[str, Any]:
        """Per-class mask L1 norms, anomaly indices, trigger success rates, flagged and
        unlearned classes of the last :meth:`apply` (empty before one)."""
        if self.detection is None:
            return {}
        detection = self.detection
        return {
            "mask_l1": [round(v, 4) for v in detection.norms],
            "anomaly_index": [_finite(v) for v in detection.indices],
            "median_l1": round(detection.median, 4),
            "mad_l1": round(detection.mad, 4),
            "anomaly_threshold": self.config_values.anomaly_threshold,
            "flagged": list(detection.flagged),
            "trigger_success": [round(t.success, 4) for t in self.triggers],
            "target_success_reached": [t.reached for t in self.triggers],
            "final_cost": [float(f"{t.final_cost:.4g}") for t in self.triggers],
            "unlearn": self.config_values.unlearn,
            "unlearned": list(self.unlearned),
            "stamped_images": self.stamped,
            "seconds_per_class": round(self.seconds_per_class, 3),
        }

    def score(self, key: KeySet) -> dict[str, Any]:
        """Whether the key's most common label was flagged (and unlearned), with its index."""
        if self.detection is None or len(key.labels) == 0:
            return {}
        key_label = int(torch.bincount(key.labels.cpu()).argmax())
        known = key_label < len(self.detection.indices)
        key_labels = sorted({int(v) for v in key.labels.tolist()})
        return {
            "cleanse_key_label": key_label,
            "cleanse_flagged_key_label": key_label in self.detection.flagged,
            "cleanse_unlearned_key_label": key_label in self.unlearned,
            "cleanse_key_label_anomaly_index": (
                _finite(self.detection.indices[key_label]) if known else None
            ),
            "cleanse_key_labels_flagged": sum(v in self.detection.flagged for v in key_labels)
            / len(key_labels),
        }

    def artifacts(self) -> dict[str, torch.Tensor]:
        """``triggers``: mask·pattern per class (K×C×H×W); ``masks``: the masks (K×1×H×W)."""
        if not self.triggers:
            return {}
        return {
            "triggers": to_uint8(torch.stack([t.mask * t.pattern for t in self.triggers])),
            "masks": to_uint8(torch.stack([t.mask.unsqueeze(0) for t in self.triggers])),
        }


def _finite(value: float) -> float:
    """``value`` rounded for a record (indices are finite: the MAD is floored)."""
    return round(value, 4) if math.isfinite(value) else 1e300
