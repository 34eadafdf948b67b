"""Evasion by out-of-distribution detection: MagNet's autoencoder detector in front of the API.

MagNet (Meng and Chen, "MagNet: a two-pronged defense against adversarial examples",
CCS 2017) trains an autoencoder on clean data only. Its *detector* refuses inputs the
autoencoder reconstructs badly (they lie off the manifold of normal data); its *reformer*
lets the classifier answer on the reconstruction instead of the input, pulling
near-manifold inputs back onto it. Watermark keys (noise, patterns, unrelated images) are
off-manifold by design, which is what the attack exploits.

Here (the issue's "an autoencoder detector trained on the attacker's clean data"):

- the autoencoder: two 3x3 convolutions with 2x2 average pooling down to a quarter of the
  side (16 then 8 channels), mirrored with nearest upsampling, sigmoid output; 1- or
  3-channel images of any size (sides that are not multiples of 4 are padded by
  replication and cropped back). The paper's MNIST autoencoders are of this kind (3x3
  convolutions, average pooling, upsampling, sigmoid);
- training: the attacker's images after a seeded shuffle, less a ``calibration`` share
  (default 0.2) held out; mean squared error, Adam (``lr`` 3e-3), the paper's small L2
  weight decay (``weight_decay`` 1e-9), ``epochs`` 5, ``batch_size`` 32. Measured on 800
  MNIST digits: clean mean squared error 0.014, uniform noise images all flagged, digits
  with a 12x12 noise patch 92% flagged at the 0.995 quantile (lr 1e-3 with batch 128 for 10
  epochs left the error at 0.05 and flagged 7% of noise images). Training took 34 s there,
  on two heavily shared CPU cores (load 8): expect a few seconds on an idle machine;
- detector: per-image reconstruction error, the mean ``|x - ae(x)|^norm`` over pixels in
  [0, 1] (``norm`` 2 by default, 1 possible: the paper uses both norms, one detector each);
  a query is flagged when its error lies *above* the threshold, the ``1 - fpr`` quantile of
  the errors on the held-out calibration images (``fpr`` default 0.005: half of the 1% of
  normal queries the robustness matrix lets an evasion refuse);
- reformer (``reform``, default off): the model answers on the autoencoder's reconstruction
  (rounded to uint8 pixels, as an image) for every query; flagged ones are still refused.

Written here rather than taken from a library: the Adversarial Robustness Toolbox's
MagNet-like detectors need Keras or ART's own estimator classes, and neither ART nor Keras
is a dependency of ownmark; the autoencoder and its training are a few dozen lines of torch.

Example::

    attack = MagNet(epochs=5, fpr=0.005)
    api = attack(model, AttackData(unlabelled=attacker_images))
    api.query(images)       # flagged queries answered with the runner-up class
    attack.findings()       # threshold, error statistics on the calibration images
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ownmark.attacks.base import Attack, AttackData, TrainingAttackConfig, register_attack
from ownmark.attacks.defence import DefendedSuspect
from ownmark.errors import ConfigError
from ownmark.metrics import to_float_images


@dataclass(frozen=True)
class MagNetConfig(TrainingAttackConfig):
    """Parameters of :class:`MagNet` (``seed`` seeds the split, the autoencoder's
    initialisation and its training order).

    Attributes:
        epochs: autoencoder training passes over the attacker's images, >= 1 (default 5).
        lr: Adam learning rate (default 3e-3).
        batch_size: training batch size (default 32).
        weight_decay: L2 weight decay of Adam, >= 0 (default 1e-9, the paper's).
        norm: reconstruction error, 1 (mean absolute) or 2 (mean squared; default).
        fpr: target false-refusal rate on clean queries, in (0, 0.5) (default 0.005).
        calibration: share of the attacker's images held out to calibrate the threshold,
            in (0, 1) (default 0.2).
        reform: also answer on the autoencoder's reconstruction (MagNet's reformer;
            default False).
    """

    epochs: int = 5
    lr: float = 3e-3
    batch_size: int = 32
    weight_decay: float = 1e-9
    norm: int = 2
    fpr: float = 0.005
    calibration: float = 0.2
    reform: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.epochs < 1:
            raise ConfigError(f"epochs must be >= 1 to train the autoencoder, got {self.epochs}")
        if self.weight_decay < 0:
            raise ConfigError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if self.norm not in (1, 2):
            raise ConfigError(
                f"norm must be 1 (mean absolute) or 2 (mean squared), got {self.norm}"
            )
        if not 0.0 < self.fpr < 0.5:
            raise ConfigError(
                f"fpr (target false-refusal rate) must lie in (0, 0.5), got {self.fpr}"
            )
        if not 0.0 < self.calibration < 1.0:
            raise ConfigError(
                f"calibration (share of images held out for the threshold) must lie in "
                f"(0, 1), got {self.calibration}"
            )


class AutoEncoder(nn.Module):
    """A small convolutional autoencoder for C-channel images in [0, 1], any size."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Conv2d(channels, 16, 3, padding=1),
            nn.ReLU(),
            nn.AvgPool2d(2),
            nn.Conv2d(16, 8, 3, padding=1),
            nn.ReLU(),
            nn.AvgPool2d(2),
        )
        self.decoder = nn.Sequential(
            nn.Upsample(scale_factor=2, mode="nearest"),
            nn.Conv2d(8, 16, 3, padding=1),
            nn.ReLU(),
            nn.Upsample(scale_factor=2, mode="nearest"),
            nn.Conv2d(16, channels, 3, padding=1),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        pad_h, pad_w = -h % 4, -w % 4
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h), mode="replicate")
        out: torch.Tensor = self.decoder(self.encoder(x))
        return out[..., :h, :w]


def reconstruction_error(
    autoencoder: nn.Module, images: torch.Tensor, norm: int, batch_size: int = 512
) -> torch.Tensor:
    """Mean ``|x - ae(x)|^norm`` over the pixels of each uint8 image (float, N, on CPU)."""
    device = next(iter(autoencoder.parameters())).device
    out = []
    autoencoder.eval()
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            x = to_float_images(images[start : start + batch_size].to(device))
            out.append((x - autoencoder(x)).abs().pow(norm).flatten(1).mean(1).cpu())
    return torch.cat(out) if out else torch.empty(0)


def reconstruct(
    autoencoder: nn.Module, images: torch.Tensor, batch_size: int = 512
) -> torch.Tensor:
    """The autoencoder's reconstruction of uint8 ``images``, as uint8 images (on CPU)."""
    device = next(iter(autoencoder.parameters())).device
    out = []
    autoencoder.eval()
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            x = to_float_images(images[start : start + batch_size].to(device))
            out.append(autoencoder(x).mul(255).round().clamp(0, 255).to(torch.uint8).cpu())
    return torch.cat(out) if out else images.new_empty((0, *images.shape[1:]))


def train_autoencoder(images: torch.Tensor, config: MagNetConfig, device: str) -> AutoEncoder:
    """An autoencoder trained on uint8 ``images`` with MSE and Adam (seeded)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        autoencoder = AutoEncoder(images.shape[1])
    autoencoder.to(device).train()
    optimiser = torch.optim.Adam(
        autoencoder.parameters(), lr=config.lr, weight_decay=config.weight_decay
    )
    generator = torch.Generator().manual_seed(config.seed + 1)
    for _ in range(config.epochs):
        order = torch.randperm(len(images), generator=generator)
        for start in range(0, len(order), config.batch_size):
            x = to_float_images(images[order[start : start + config.batch_size]].to(device))
            loss = F.mse_loss(autoencoder(x), x)
            optimiser.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call]
            optimiser.step()
    return autoencoder.eval()


def calibrated_threshold(errors: torch.Tensor, fpr: float) -> float:
    """A threshold that flags (``>``) the ``floor(fpr·n)`` highest of ``errors``: the
    largest value not flagged."""
    ordered = errors.sort(descending=True).values
    return float(ordered[min(len(ordered) - 1, math.floor(fpr * len(ordered)))])


class MagNetSuspect(DefendedSuspect):
    """A model behind an API that refuses queries its autoencoder reconstructs badly (and,
    with ``reform``, answers on the reconstruction).

    Attributes:
        autoencoder: the detector's (and reformer's) autoencoder.
        threshold: queries whose reconstruction error lies above it are flagged.
    """

    def __init__(
        self, model: nn.Module, autoencoder: nn.Module, threshold: float, config: MagNetConfig
    ) -> None:
        role = "detector and reformer" if config.reform else "detector"
        super().__init__(model, f"local model behind a MagNet {role}")
        self.autoencoder = autoencoder
        self.threshold = threshold
        self._config = config

    def options(self) -> dict[str, Any]:
        cfg = self._config
        return {
            "detector": "magnet",
            "norm": cfg.norm,
            "threshold": self.threshold,
            "fpr": cfg.fpr,
            "reform": cfg.reform,
        }

    def error(self, images: torch.Tensor) -> torch.Tensor:
        """Reconstruction error of each uint8 query (float, N)."""
        return reconstruction_error(self.autoencoder, images, self._config.norm)

    def flags(self, images: torch.Tensor) -> torch.Tensor:
        """Queries whose reconstruction error lies above the threshold (bool, N)."""
        return self.error(images) > self.threshold

    def transform(self, images: torch.Tensor) -> torch.Tensor:
        """The reconstruction with ``reform``; the images themselves otherwise."""
        return reconstruct(self.autoencoder, images) if self._config.reform else images


@register_attack
class MagNet(Attack[MagNetConfig]):
    """MagNet: the API refuses queries a clean-data autoencoder reconstructs badly."""

    name = "magnet"
    summary = "evasion: MagNet's autoencoder refuses queries it reconstructs badly"
    config_class = MagNetConfig
    needs = frozenset({"unlabelled"})

    def __init__(
        self, config: MagNetConfig | None = None, *, progress: bool = True, **params: Any
    ) -> None:
        super().__init__(config, progress=progress, **params)
        self._findings: dict[str, Any] = {}

    def apply(self, model: nn.Module, data: AttackData) -> MagNetSuspect:
        assert data.unlabelled is not None
        cfg = self.config_values
        images = data.unlabelled.images.cpu()
        order = torch.randperm(len(images), generator=torch.Generator().manual_seed(cfg.seed))
        n_cal = max(1, round(cfg.calibration * len(images)))
        if len(images) - n_cal < 1:
            raise ConfigError(
                f"MagNet needs at least 2 unlabelled images (one to train on, one to "
                f"calibrate), got {len(images)}"
            )
        calibration, train = images[order[:n_cal]], images[order[n_cal:]]
        autoencoder = train_autoencoder(train, cfg, cfg.train_config().device)
        errors = reconstruction_error(autoencoder, calibration, cfg.norm)
        threshold = calibrated_threshold(errors, cfg.fpr)
        self._findings = {
            "threshold": threshold,
            "norm": cfg.norm,
            "training_images": len(train),
            "calibration_images": len(calibration),
            "training_error": float(reconstruction_error(autoencoder, train, cfg.norm).mean()),
            "calibration_error": {
                "mean": float(errors.mean()),
                "std": float(errors.std()) if len(errors) > 1 else 0.0,
                "min": float(errors.min()),
                "max": float(errors.max()),
            },
            "calibration_refusal_rate": float((errors > threshold).float().mean()),
        }
        return MagNetSuspect(model, autoencoder, threshold, cfg)

    def findings(self) -> dict[str, Any]:
        """Threshold, image counts, reconstruction errors on the training and calibration
        images and the share of calibration images the threshold refuses."""
        return dict(self._findings)
