"""Evasion by trigger detection: STRIP in front of the stolen model's API.

STRIP (Gao et al., "STRIP: a defence against trojan attacks on deep neural networks",
ACSAC 2019) superimposes each incoming query on clean images and looks at how much the
model's prediction changes. A clean query blended with other clean images gives varied,
uncertain predictions; a query carrying a trigger keeps the trigger through the blend, so
the model answers the trigger's class whatever the overlay: a *low* entropy of the softmax
means the prediction does not depend on the content. Watermark keys that work like triggers
(patterns, noise, out-of-distribution content) are what the detector is meant to catch.

For every query the API:

1. draws ``overlays`` images (default 16) from the attacker's own clean images;
2. superimposes the query on each (``blend``): ``add`` (default), the saturating pixel sum
   ``min(query + overlay, 255)`` of the authors' released code (``cv2.addWeighted`` with
   weights 1 and 1 on uint8 images), or ``average``, the equal-weight linear blend of the
   paper's text, rounded to uint8 pixels;
3. runs the model on the blends and takes the mean Shannon entropy (in bits, as the paper)
   of the softmax of the scores;
4. flags the query when that mean entropy lies *below* the threshold.

The threshold is calibrated on the attacker's clean data as the ``fpr`` quantile of the
entropies (default 0.005: half of the 1% of normal queries the robustness matrix lets an
evasion refuse), as the paper sets its boundary from the entropy distribution of clean
inputs only. The attacker's images are split (after a seeded shuffle): a ``calibration``
share (default 0.5) for the threshold, the rest as the pool the overlays are drawn from, so
the threshold is never measured on a blend of an image with itself.

Why ``add`` by default: averaging halves the trigger's contrast. On the tests' planted
patch backdoor (a white 4x4 square, LeNet-5), ``average`` leaves the mean entropy of
triggered queries at 0.84 bit against 1.2 bits for clean ones and flags 8% of them at the
calibrated threshold; ``add`` keeps the white patch white, giving 0.08 bit against 0.70 bit
and flagging about 65%. What it misses are triggered digits whose own strokes compete with
the patch; what it wrongly refuses are mostly bold 8s, which stay 8s under any overlay.

The paper uses N = 100 overlays per input; the default 16 here keeps a query at 16 forward
passes (32 gave the same separation in the measurement above). The overlays of a query
are drawn by a generator keyed on ``seed`` and the query's pixels: the API is a function
of the image, so a repeated query gets the same answer (the owner cannot average the
decision away by asking again) and results do not depend on the order of queries.

Written here rather than taken from the Adversarial Robustness Toolbox: ART is not a
dependency of ownmark, and its STRIP wraps ART's own classifier abstraction (it would need
the stolen model re-wrapped as an ART estimator and gives no API that answers queries);
the test is a few lines of torch on top of :class:`~ownmark.attacks.defence.DefendedSuspect`.

Example::

    attack = Strip(overlays=16, fpr=0.005)
    api = attack(model, AttackData(unlabelled=attacker_images))
    api.query(images)       # flagged queries answered with the runner-up class
    attack.findings()       # threshold, entropy statistics on the calibration images
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from ownmark.attacks.base import Attack, AttackConfig, AttackData, register_attack
from ownmark.attacks.defence import DefendedSuspect
from ownmark.errors import ConfigError
from ownmark.metrics import logits

#: The most blended images sent through the model at once (bounds memory on big batches).
BLEND_BATCH = 4096
#: How :class:`Strip` may superimpose a query and an overlay.
BLENDS = ("add", "average")


@dataclass(frozen=True)
class StripConfig(AttackConfig):
    """Parameters of :class:`Strip` (``seed`` seeds the split and the overlay draws).

    Attributes:
        overlays: clean images each query is blended with, 2..1000 (default 16; the paper
            uses 100).
        fpr: target false-refusal rate on clean queries, in (0, 0.5) (default 0.005).
        calibration: share of the attacker's images kept to calibrate the threshold, in
            (0, 1) (default 0.5); the rest is the overlay pool.
        blend: how a query and an overlay are superimposed: ``add`` (saturating sum, the
            authors' code; default) or ``average`` (the paper's equal-weight blend).
    """

    overlays: int = 16
    fpr: float = 0.005
    calibration: float = 0.5
    blend: str = "add"

    def __post_init__(self) -> None:
        if self.blend not in BLENDS:
            raise ConfigError(f"blend must be one of {', '.join(BLENDS)}; got {self.blend!r}")
        if not 2 <= self.overlays <= 1000:
            raise ConfigError(f"overlays must lie in 2..1000, got {self.overlays}")
        if not 0.0 < self.fpr < 0.5:
            raise ConfigError(
                f"fpr (target false-refusal rate) must lie in (0, 0.5), got {self.fpr}"
            )
        if not 0.0 < self.calibration < 1.0:
            raise ConfigError(
                f"calibration (share of images for the threshold) must lie in (0, 1), "
                f"got {self.calibration}"
            )


def _image_key(image: torch.Tensor) -> int:
    """A 64-bit number that names the pixels of one uint8 image."""
    digest = hashlib.blake2b(image.contiguous().numpy().tobytes(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def blend(images: torch.Tensor, overlays: torch.Tensor, mode: str = "add") -> torch.Tensor:
    """uint8 ``images`` (N×C×H×W) superimposed on ``overlays`` (N×K×C×H×W): N·K uint8
    images (N·K×C×H×W), query-major; ``add``: saturating sum, ``average``: rounded mean."""
    total = images.unsqueeze(1).to(torch.int16) + overlays.to(torch.int16)
    mixed = total.clamp(max=255) if mode == "add" else (total + 1) // 2
    return mixed.to(torch.uint8).flatten(0, 1)


def entropy_bits(scores: torch.Tensor) -> torch.Tensor:
    """Shannon entropy in bits of the softmax of each row of ``scores`` (N×K)."""
    log_p = torch.log_softmax(scores.double(), dim=1)
    return -(log_p.exp() * log_p).sum(dim=1).div(math.log(2.0)).float()


class StripSuspect(DefendedSuspect):
    """A model behind an API that refuses queries whose predictions survive blending with
    clean images (STRIP's low-entropy test).

    Attributes:
        pool: the clean images overlays are drawn from (uint8).
        threshold: queries whose mean entropy (bits) lies below it are flagged.
    """

    def __init__(
        self, model: nn.Module, pool: torch.Tensor, threshold: float, config: StripConfig
    ) -> None:
        super().__init__(model, f"local model behind STRIP ({config.overlays} overlays)")
        if len(pool) < config.overlays:
            raise ConfigError(
                f"STRIP needs at least {config.overlays} overlay images, got {len(pool)}; "
                "give the attacker more unlabelled images or lower overlays"
            )
        self.pool = pool.cpu()
        self.threshold = threshold
        self._config = config

    def options(self) -> dict[str, Any]:
        cfg = self._config
        return {
            "detector": "strip",
            "overlays": cfg.overlays,
            "blend": cfg.blend,
            "threshold_bits": self.threshold,
            "fpr": cfg.fpr,
        }

    def overlay_indices(self, images: torch.Tensor) -> torch.Tensor:
        """Which pool images each query is blended with (int64, N×overlays): a draw
        without replacement keyed on ``seed`` and the query's pixels."""
        rows = []
        for image in images.cpu():
            rng = np.random.default_rng([self._config.seed, _image_key(image)])
            rows.append(rng.choice(len(self.pool), self._config.overlays, replace=False))
        if not rows:
            return torch.empty(0, self._config.overlays, dtype=torch.int64)
        return torch.from_numpy(np.stack(rows).astype(np.int64))

    def entropy(self, images: torch.Tensor) -> torch.Tensor:
        """Mean entropy in bits (float, N) of the model's softmax over each query's blends."""
        images = images.cpu()
        if images.shape[1:] != self.pool.shape[1:]:
            raise ValueError(
                f"queries of shape {tuple(images.shape[1:])} do not match the overlay images "
                f"{tuple(self.pool.shape[1:])}"
            )
        k = self._config.overlays
        step = max(1, BLEND_BATCH // k)
        out = []
        for start in range(0, len(images), step):
            chunk = images[start : start + step]
            blends = blend(chunk, self.pool[self.overlay_indices(chunk)], self._config.blend)
            out.append(entropy_bits(logits(self.model, blends)).view(len(chunk), k).mean(1))
        return torch.cat(out) if out else torch.empty(0)

    def flags(self, images: torch.Tensor) -> torch.Tensor:
        """Queries whose mean blended entropy lies below the threshold (bool, N)."""
        return self.entropy(images) < self.threshold


def calibrated_threshold(entropies: torch.Tensor, fpr: float) -> float:
    """A threshold that flags (``<``) the ``floor(fpr·n)`` lowest of ``entropies``: the
    smallest value not flagged."""
    ordered = entropies.sort().values
    return float(ordered[min(len(ordered) - 1, math.floor(fpr * len(ordered)))])


@register_attack
class Strip(Attack[StripConfig]):
    """STRIP: the API refuses queries whose predictions survive blending with clean images."""

    name = "strip"
    summary = "evasion: STRIP refuses queries whose prediction survives blending (low entropy)"
    config_class = StripConfig
    needs = frozenset({"unlabelled"})

    def __init__(
        self, config: StripConfig | None = None, *, progress: bool = True, **params: Any
    ) -> None:
        super().__init__(config, progress=progress, **params)
        self._findings: dict[str, Any] = {}

    def apply(self, model: nn.Module, data: AttackData) -> StripSuspect:
        assert data.unlabelled is not None
        cfg = self.config_values
        images = data.unlabelled.images.cpu()
        order = torch.randperm(len(images), generator=torch.Generator().manual_seed(cfg.seed))
        n_cal = max(1, round(cfg.calibration * len(images)))
        calibration, pool = images[order[:n_cal]], images[order[n_cal:]]
        suspect = StripSuspect(model, pool, math.inf, cfg)
        entropies = suspect.entropy(calibration)
        suspect.threshold = calibrated_threshold(entropies, cfg.fpr)
        refused = float((entropies < suspect.threshold).float().mean())
        self._findings = {
            "threshold_bits": suspect.threshold,
            "calibration_images": len(calibration),
            "overlay_pool": len(pool),
            "entropy_bits": {
                "mean": float(entropies.mean()),
                "std": float(entropies.std()) if len(entropies) > 1 else 0.0,
                "min": float(entropies.min()),
                "max": float(entropies.max()),
            },
            "calibration_refusal_rate": refused,
        }
        return suspect

    def findings(self) -> dict[str, Any]:
        """Threshold, calibration and overlay counts, entropy statistics on the calibration
        images and the share of them the threshold refuses."""
        return dict(self._findings)
