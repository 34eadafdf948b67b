"""Model inversion: can gradient descent on the input reveal the watermark's trigger?

Zhang et al. 2018 (seed 001, section 5.5, Figs. 8-9) run the model inversion attack of
Fredrikson, Jha and Ristenpart ("Model inversion attacks that exploit confidence information
and basic countermeasures", CCS 2015) on their watermarked models: starting from (a) a
training image, (b) a blank image and (c) random noise, follow the gradient of the
prediction loss of the watermark's target class to modify the input, and look at what comes
out. They saw nothing of the watermarks (prototypical class images, or noise), but only by
eye. Here the same attack puts a number on it: :meth:`ModelInversion.score` measures the SSIM
(:mod:`ownmark.similarity`) between the inverted images of the key's target label and the
key's trigger images, next to a baseline (the same SSIM for clean images of that class and
for the starting images), so "inversion reveals nothing" is a comparison of two numbers.

The attack (defaults): for every start and every class (``target=-1``; or one class), Adam
(lr 0.05) minimises the cross-entropy of that class, i.e. maximises its softmax score, over
200 steps, the pixels clamped to [0, 1] after every step. Optional priors, both off by
default as in the paper: ``tv`` weights the mean absolute difference of neighbouring pixels
(total variation, smoother images) and ``l2`` the mean squared pixel value. The training
start is an image of the attacker's data drawn with ``seed``, the blank start is all zeros
(black), the noise start uniform on [0, 1] drawn with ``seed``.

The model is returned unchanged: this attack inspects, it does not remove. Written here
because the attack is twenty lines of autograd (ART's ``MIFace`` would add a dependency).

Example::

    attack = ModelInversion(target=-1, steps=200)
    attack(model, AttackData(train=data.train))
    attack.findings()["starts"]["blank"]["final_confidence"]
    attack.score(key)["reveals_trigger"]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ownmark.attacks.base import Attack, AttackConfig, AttackData, register_attack
from ownmark.errors import ConfigError
from ownmark.keys import KeySet
from ownmark.metrics import to_float_images
from ownmark.similarity import pairwise_ssim

#: The three starting points of Zhang et al. (section 5.5).
STARTS = ("train", "blank", "noise")
#: Key images scored at most (SSIM is computed with every inverted image).
MAX_SCORED_KEY_IMAGES = 200


@dataclass(frozen=True)
class InvertConfig(AttackConfig):
    """Parameters of :class:`ModelInversion`.

    Attributes:
        target: the class to invert (default -1: every class of the model).
        starts: comma-separated starting points among ``train``, ``blank``, ``noise``
            (default all three).
        steps: gradient steps (default 200).
        lr: Adam learning rate on [0, 1] pixels (default 0.05).
        tv: weight of the total-variation prior (default 0: off, as in the paper).
        l2: weight of the L2 prior on pixel values (default 0: off).
        baseline_images: clean images of the key's target class (from the attacker's data)
            used as the SSIM baseline in :meth:`ModelInversion.score` (default 16).
        margin: how far above the baseline the best inverted image's SSIM must be to count
            as revealing the trigger (default 0.1).
        seed: picks the training start and draws the noise start (default 0).
    """

    target: int = -1
    starts: str = "train,blank,noise"
    steps: int = 200
    lr: float = 0.05
    tv: float = 0.0
    l2: float = 0.0
    baseline_images: int = 16
    margin: float = 0.1

    def __post_init__(self) -> None:
        if self.target < -1:
            raise ConfigError(
                f"target must be a class index or -1 (every class), got {self.target}"
            )
        names = self.start_names()
        unknown = [s for s in names if s not in STARTS]
        if not names or unknown or len(set(names)) != len(names):
            raise ConfigError(
                f"starts must be distinct names among {', '.join(STARTS)} separated by commas, "
                f"got {self.starts!r}"
            )
        if self.steps < 1:
            raise ConfigError(f"steps must be at least 1, got {self.steps}")
        if not self.lr > 0:
            raise ConfigError(f"lr must be positive, got {self.lr}")
        if self.tv < 0 or self.l2 < 0:
            raise ConfigError(f"tv and l2 must be >= 0, got tv={self.tv}, l2={self.l2}")
        if self.baseline_images < 1:
            raise ConfigError(f"baseline_images must be at least 1, got {self.baseline_images}")
        if not 0 <= self.margin <= 2:
            raise ConfigError(f"margin must be in [0, 2] (SSIM lies in [-1, 1]), got {self.margin}")

    def start_names(self) -> list[str]:
        return [s.strip() for s in self.starts.split(",") if s.strip()]


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference of vertically and horizontally neighbouring pixels, per image."""
    dh = (x[..., 1:, :] - x[..., :-1, :]).abs().flatten(1).mean(dim=1)
    dw = (x[..., :, 1:] - x[..., :, :-1]).abs().flatten(1).mean(dim=1)
    return dh + dw


def invert(
    model: nn.Module,
    starts: torch.Tensor,
    targets: torch.Tensor,
    *,
    steps: int = 200,
    lr: float = 0.05,
    tv: float = 0.0,
    l2: float = 0.0,
) -> torch.Tensor:
    """Images (float [0, 1]) that ``model`` scores as ``targets``, from ``starts`` (float).

    Each image is optimised on its own (the loss is a sum over images; the model is put in
    eval mode and restored). Adam on the cross-entropy of the target plus the priors.
    """
    was_training = model.training
    model.eval()
    x = starts.detach().clone().clamp_(0, 1).requires_grad_(True)
    optimiser = torch.optim.Adam([x], lr=lr)
    try:
        for _ in range(steps):
            loss = F.cross_entropy(model(x), targets, reduction="none")
            if tv:
                loss = loss + tv * total_variation(x)
            if l2:
                loss = loss + l2 * (x**2).flatten(1).mean(dim=1)
            optimiser.zero_grad()
            loss.sum().backward()  # type: ignore[no-untyped-call]
            optimiser.step()
            with torch.no_grad():
                x.clamp_(0, 1)
    finally:
        model.train(was_training)
        for p in model.parameters():
            p.grad = None
    return x.detach()


def _uint8(x: torch.Tensor) -> torch.Tensor:
    return (x * 255).round().clamp(0, 255).to(torch.uint8)


@torch.no_grad()
def _confidence(model: nn.Module, x: torch.Tensor, targets: torch.Tensor) -> list[float]:
    was_training = model.training
    model.eval()
    try:
        probs = F.softmax(model(x), dim=1)
    finally:
        model.train(was_training)
    return [round(float(v), 6) for v in probs[torch.arange(len(x)), targets]]


@register_attack
class ModelInversion(Attack[InvertConfig]):
    """Invert the model from a training image, a blank and noise; score SSIM to the key."""

    name = "invert"
    summary = "model inversion from training/blank/noise starts (Fredrikson et al. 2015)"
    config_class = InvertConfig
    needs = frozenset({"train"})

    def __init__(self, config: InvertConfig | None = None, **kwargs: Any) -> None:
        super().__init__(config, **kwargs)
        self._classes: list[int] = []
        self._starts: dict[str, torch.Tensor] = {}  # name -> 1×C×H×W uint8 start
        self._inverted: dict[str, torch.Tensor] = {}  # name -> K×C×H×W uint8 (per class)
        self._start_conf: dict[str, list[float]] = {}
        self._final_conf: dict[str, list[float]] = {}
        self._clean: dict[int, torch.Tensor] = {}  # class -> clean uint8 images (baseline)

    def apply(self, model: nn.Module, data: AttackData) -> nn.Module:
        assert data.train is not None
        cfg = self.config_values
        train = data.train
        if len(train) == 0:
            raise ConfigError("attack 'invert' needs at least one training image of the attacker")
        shape = tuple(train.images.shape[1:])
        with torch.no_grad():
            was_training = model.training
            model.eval()
            classes = int(model(torch.zeros(1, *shape)).shape[1])
            model.train(was_training)
        if cfg.target >= classes:
            raise ConfigError(
                f"target {cfg.target} is not a class of the model ({classes} classes); "
                "give 0..K-1 or -1 for every class"
            )
        self._classes = list(range(classes)) if cfg.target == -1 else [cfg.target]
        generator = torch.Generator().manual_seed(cfg.seed)
        row = int(torch.randint(len(train), (1,), generator=generator))
        noise = torch.rand((1, *shape), generator=generator)
        available = {
            "train": to_float_images(train.images[row : row + 1]),
            "blank": torch.zeros((1, *shape)),
            "noise": noise,
        }
        names = cfg.start_names()
        k = len(self._classes)
        starts = torch.cat([available[name].expand(k, *shape) for name in names])
        targets = torch.tensor(self._classes * len(names), dtype=torch.int64)
        inverted = invert(model, starts, targets, steps=cfg.steps, lr=cfg.lr, tv=cfg.tv, l2=cfg.l2)
        start_conf = _confidence(model, starts, targets)
        # Confidence of the images as they are saved (rounded to uint8), not of the floats.
        images = _uint8(inverted)
        final_conf = _confidence(model, to_float_images(images), targets)
        self._starts, self._inverted, self._start_conf, self._final_conf = {}, {}, {}, {}
        for i, name in enumerate(names):
            rows = slice(i * k, (i + 1) * k)
            self._starts[name] = _uint8(available[name])
            self._inverted[name] = images[rows].clone()
            self._start_conf[name] = start_conf[rows]
            self._final_conf[name] = final_conf[rows]
        self._clean = {}
        order = torch.randperm(len(train), generator=generator)
        for c in range(classes):
            picks = order[train.labels[order] == c][: cfg.baseline_images]
            self._clean[c] = train.images[picks].clone()
        return model

    def findings(self) -> dict[str, Any]:
        """Per start: the target classes' softmax confidence before and after inversion."""
        if not self._inverted:
            return {}
        return {
            "classes": list(self._classes),
            "starts": {
                name: {
                    "start_confidence": self._start_conf[name],
                    "final_confidence": self._final_conf[name],
                }
                for name in self._inverted
            },
        }

    def artifacts(self) -> dict[str, torch.Tensor]:
        """``inverted-<start>``: one image per class (in class order); ``starts``."""
        if not self._inverted:
            return {}
        out = {f"inverted-{name}": images for name, images in self._inverted.items()}
        out["starts"] = torch.cat(list(self._starts.values()))
        return out

    def score(self, key: KeySet) -> dict[str, Any]:
        """SSIM of the inverted images of the key's target label to the key's trigger images,
        next to the same SSIM for clean images of that class and for the starts.

        The target label is the most common key label. ``reveals_trigger``: the best inverted
        image comes closer to a trigger than the best baseline image by more than ``margin``.
        """
        if not self._inverted or len(key) == 0:
            return {}
        target = int(torch.mode(key.labels).values)
        record: dict[str, Any] = {"inversion_target": target}
        if target not in self._classes:
            record["inverted"] = False
            return record
        column = self._classes.index(target)
        triggers = key.images[:MAX_SCORED_KEY_IMAGES]
        inverted = torch.stack([images[column] for images in self._inverted.values()])
        if inverted.shape[1:] != triggers.shape[1:]:
            record["inverted"] = False
            return record
        inv = pairwise_ssim(inverted, triggers)
        starts = pairwise_ssim(torch.cat(list(self._starts.values())), triggers)
        clean = self._clean.get(target, triggers[:0])
        base = pairwise_ssim(clean, triggers) if len(clean) else None
        inv_best = float(inv.max())
        baseline_best = float(base.max()) if base is not None else None
        start_best = float(starts.max())
        reference = max(start_best, baseline_best if baseline_best is not None else -1.0)
        record.update(
            {
                "inverted": True,
                "inversion_ssim_best": round(inv_best, 6),
                "inversion_ssim_mean": round(float(inv.mean()), 6),
                "inversion_ssim_by_start": {
                    name: round(float(inv[i].max()), 6) for i, name in enumerate(self._inverted)
                },
                "baseline_ssim_best": None if baseline_best is None else round(baseline_best, 6),
                "baseline_ssim_mean": None if base is None else round(float(base.mean()), 6),
                "baseline_images": len(clean),
                "start_ssim_best": round(start_best, 6),
                "start_ssim_mean": round(float(starts.mean()), 6),
                "key_images_scored": len(triggers),
                "margin": self.config_values.margin,
                "reveals_trigger": inv_best > reference + self.config_values.margin,
            }
        )
        return record
