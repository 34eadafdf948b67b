"""Evasion by input transformation: the API transforms every query before the model sees it.

The model keeps its weights; the prediction API in front of it applies one transformation to
every image it receives (normal queries and key images alike), hoping that it destroys the
trigger while the content survives:

- ``jpeg``: a JPEG round trip at ``quality`` (50..95, default 75), through Pillow;
- ``blur``: Gaussian blur with standard deviation ``sigma`` pixels (default 1.0; kernel
  radius ``ceil(3 sigma)``, edges replicated);
- ``median``: 3x3 median smoothing (edges replicated);
- ``noise``: additive Gaussian noise of standard deviation ``std`` grey levels (default 8),
  drawn from a generator seeded with ``seed`` (fresh noise for every query, reproducibly).

Every result is rounded and clamped back to uint8 pixels, as an API that decodes images
would see them. Written with torch ops and Pillow rather than kornia: kornia is not a
dependency of ownmark, and its differentiable JPEG approximates the codec, while the
attack should apply the real one.

Example::

    api = Preprocess(kind="jpeg", quality=70)(model)
    api.query(images)
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from ownmark.attacks.base import Attack, AttackConfig, AttackData, register_attack
from ownmark.attacks.defence import DefendedSuspect
from ownmark.errors import ConfigError

#: The transformations :class:`Preprocess` knows.
KINDS = ("jpeg", "blur", "median", "noise")


@dataclass(frozen=True)
class PreprocessConfig(AttackConfig):
    """Parameters of :class:`Preprocess` (``seed`` seeds the noise).

    Attributes:
        kind: ``jpeg`` (default), ``blur``, ``median`` or ``noise``.
        quality: JPEG quality, 50..95 (default 75; used by ``jpeg``).
        sigma: Gaussian blur standard deviation in pixels, in (0, 5] (default 1.0; ``blur``).
        std: noise standard deviation in grey levels, in (0, 64] (default 8.0; ``noise``).
    """

    kind: str = "jpeg"
    quality: int = 75
    sigma: float = 1.0
    std: float = 8.0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"kind must be one of {', '.join(KINDS)}; got {self.kind!r}")
        if not 50 <= self.quality <= 95:
            raise ConfigError(f"JPEG quality must lie in 50..95, got {self.quality}")
        if not 0.0 < self.sigma <= 5.0:
            raise ConfigError(f"blur sigma must lie in (0, 5], got {self.sigma}")
        if not 0.0 < self.std <= 64.0:
            raise ConfigError(f"noise std must lie in (0, 64] grey levels, got {self.std}")


def _to_uint8(images: torch.Tensor) -> torch.Tensor:
    return images.round().clamp(0, 255).to(torch.uint8)


def jpeg(images: torch.Tensor, quality: int) -> torch.Tensor:
    """JPEG round trip of uint8 ``images`` (N×C×H×W): grey (C=1) and RGB (C=3) as such,
    other channel counts one channel at a time."""
    out = torch.empty_like(images)
    array = images.cpu().numpy()
    for n in range(array.shape[0]):
        planes = [array[n].transpose(1, 2, 0)] if array.shape[1] == 3 else list(array[n])
        decoded = []
        for plane in planes:
            buffer = io.BytesIO()
            Image.fromarray(np.ascontiguousarray(plane)).save(
                buffer, format="JPEG", quality=quality
            )
            buffer.seek(0)
            with Image.open(buffer) as image:
                decoded.append(np.asarray(image))
        chw = decoded[0].transpose(2, 0, 1) if array.shape[1] == 3 else np.stack(decoded)
        out[n] = torch.from_numpy(np.ascontiguousarray(chw))
    return out


def gaussian_blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of uint8 ``images`` (N×C×H×W), edges replicated."""
    radius = max(1, math.ceil(3 * sigma))
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-(offsets**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    n, c, h, w = images.shape
    x = images.float().reshape(n * c, 1, h, w)
    x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="replicate"), kernel.view(1, 1, 1, -1))
    x = F.conv2d(F.pad(x, (0, 0, radius, radius), mode="replicate"), kernel.view(1, 1, -1, 1))
    return _to_uint8(x.reshape(n, c, h, w))


def median3(images: torch.Tensor) -> torch.Tensor:
    """3x3 median of uint8 ``images`` (N×C×H×W), edges replicated."""
    n, c, h, w = images.shape
    x = F.pad(images.float().reshape(n * c, 1, h, w), (1, 1, 1, 1), mode="replicate")
    windows = F.unfold(x, kernel_size=3)  # (n*c, 9, h*w)
    return _to_uint8(windows.median(dim=1).values.reshape(n, c, h, w))


def add_noise(images: torch.Tensor, std: float, generator: torch.Generator) -> torch.Tensor:
    """uint8 ``images`` plus Gaussian noise of ``std`` grey levels, rounded and clamped."""
    noise = torch.randn(images.shape, generator=generator) * std
    return _to_uint8(images.float().cpu() + noise)


class PreprocessedSuspect(DefendedSuspect):
    """A model behind an API that transforms every query before the model sees it (and
    refuses none)."""

    def __init__(self, model: nn.Module, config: PreprocessConfig) -> None:
        super().__init__(model, f"local model behind {config.kind} preprocessing")
        self._config = config
        self._generator = torch.Generator().manual_seed(config.seed)

    def options(self) -> dict[str, Any]:
        cfg = self._config
        setting = {"jpeg": cfg.quality, "blur": cfg.sigma, "median": 3, "noise": cfg.std}
        return {"preprocess": cfg.kind, "strength": setting[cfg.kind]}

    def transform(self, images: torch.Tensor) -> torch.Tensor:
        """What the model sees for uint8 ``images`` (N×C×H×W)."""
        cfg = self._config
        if cfg.kind == "jpeg":
            return jpeg(images, cfg.quality)
        if cfg.kind == "blur":
            return gaussian_blur(images, cfg.sigma)
        if cfg.kind == "median":
            return median3(images)
        return add_noise(images, cfg.std, self._generator)


@register_attack
class Preprocess(Attack[PreprocessConfig]):
    """The API applies JPEG, Gaussian blur, median smoothing or noise to every query."""

    name = "preprocess"
    summary = "evasion: the API applies JPEG, blur, median smoothing or noise to every query"
    config_class = PreprocessConfig

    def apply(self, model: nn.Module, data: AttackData) -> PreprocessedSuspect:
        return PreprocessedSuspect(model, self.config_values)
