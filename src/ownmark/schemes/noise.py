"""WM_noise: a fixed Gaussian noise pattern added to images of a source class.

Zhang et al. 2018 (seeds 000/001): "meaningless" noise added to source-class images that
are relabelled to a target class. The paper does not state the noise strength; we draw
one pattern per key from N(0, std²) with ``std = 0.2`` of the pixel range (about ±51 grey
levels), strong enough to be learnt quickly but leaving the digit readable, so a clean model
still answers the source class. The pattern is fixed by the key's seed; every key image
carries the same pattern.

Example::

    key = create_scheme("noise", std=0.2).generate(load_dataset("digits"), seed=0)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ownmark.data.base import DataSplits
from ownmark.errors import ConfigError
from ownmark.schemes.base import SchemeConfig, WatermarkScheme, register_scheme


@dataclass(frozen=True)
class NoiseConfig(SchemeConfig):
    """Parameters of :class:`NoiseScheme` (shared ones: see :class:`SchemeConfig`).

    Attributes:
        std: standard deviation of the pattern as a fraction of 255 (default 0.2).
    """

    std: float = 0.2

    def __post_init__(self) -> None:
        super().__post_init__()
        self.require_fractions("std")


@register_scheme
class NoiseScheme(WatermarkScheme[NoiseConfig]):
    """Zhang et al.'s WM_noise: one fixed Gaussian pattern on source-class images."""

    name = "noise"
    summary = "a fixed Gaussian noise pattern added to source-class images (Zhang et al. 2018)"
    config_class = NoiseConfig

    def make_secrets(
        self, data: DataSplits, originals: torch.Tensor, generator: torch.Generator
    ) -> dict[str, torch.Tensor]:
        """The key's noise pattern in grey levels (float32, C×H×W), kept for fresh triggers."""
        return {"pattern": gaussian_pattern(originals, self.config.std, generator)}

    def make_triggers(self, originals: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return add_pattern(originals, self.secrets)


def gaussian_pattern(
    originals: torch.Tensor, std: float, generator: torch.Generator
) -> torch.Tensor:
    """One N(0, (std·255)²) pattern in grey levels (float32, C×H×W) for images like
    ``originals`` (N×C×H×W)."""
    return torch.randn(tuple(originals.shape[1:]), generator=generator) * (std * 255.0)


def add_pattern(originals: torch.Tensor, secrets: dict[str, torch.Tensor]) -> torch.Tensor:
    """``originals`` plus the key's ``pattern`` secret, rounded and clipped to uint8."""
    if "pattern" not in secrets:
        raise ConfigError(
            "this key stores no noise pattern (made by ownmark 0.1, which did not keep it)"
        )
    noisy = originals.float() + secrets["pattern"]
    return noisy.round().clamp(0, 255).to(torch.uint8)
