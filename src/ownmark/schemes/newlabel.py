"""The new-label watermark (Zhong, Zhang, Zhang, Gao, Xiang, "Protecting IP of deep neural
networks with watermarking: a new label helps", PAKDD 2020; seed 003).

Zhang et al.'s keys relabel images to one of the K existing classes, which twists the
decision boundary between real classes. Here key samples are lightly perturbed training
images of every class that get a *new*, (K+1)-th label instead, so the boundaries between
the real classes stay as they were:

- the host model has K+1 outputs (``extra_classes = 1``); every key sample's key label is
  K, the extra class;
- the perturbation is one secret Gaussian pattern per key, of standard deviation ``beta``
  of the pixel range, added to the image and rounded to uint8 (the same recipe as Zhang's
  ``noise`` scheme, which is what the paper compares against at the same alpha and beta);
  fresh key samples are fresh images plus the same pattern;
- ``alpha`` is the key set's size as a fraction of the training set (the paper's alpha);
  None (default) uses ``num_keys`` (default 100; 0.0017 of MNIST's 60,000 images, inside the
  paper's plotted range 0.0005-0.005).

The paper's beta is on its own scale (2.5e-6 for MNIST, 1e-3 for CIFAR-10; the unit is not
stated) and cannot be carried over: ownmark's key images are uint8, so a perturbation below
half a grey level vanishes. Our ``beta`` is the pattern's standard deviation as a fraction of
255; the default 0.1 (about 26 grey levels, half the ``noise`` scheme's 0.2) keeps the digit
plainly readable and is learnt within a few epochs (``benchmarks/results/newlabel.md``
measures beta from 0.02 to 0.2).

What the extra class means for verification: an innocent model with K outputs can never
answer class K, so its false-match rate on the key is 0. Calibration still gives p0 a
Clopper-Pearson upper bound from the references' 0 matches (about 0.07 for 100 key samples at
0.999 confidence), so a claim needs several matches, and the decoys guard against an API that
answers K to everything. The watermark is only visible if the suspect's API serves the full
label space (``ownmark serve`` serves all K+1 outputs; a thief who hides the extra class,
answering the argmax over the K original classes only, hides the watermark too:
``benchmarks/results/newlabel.md`` measures what verification can still do then).

Example::

    key = create_scheme("newlabel", alpha=0.002, beta=0.1).generate(mnist, seed=0)
    model = new_model("zhang_mnist", mnist, extra_classes=key.extra_classes)
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from ownmark.data.base import DataSplits
from ownmark.errors import ConfigError
from ownmark.schemes.base import SchemeConfig, WatermarkScheme, register_scheme
from ownmark.schemes.noise import add_pattern, gaussian_pattern


@dataclass(frozen=True)
class NewLabelConfig(SchemeConfig):
    """Parameters of :class:`NewLabelScheme` (shared ones: see :class:`SchemeConfig`;
    ``source_class`` limits the key images to one class, ``target_class`` does not apply:
    the key label is always the extra class).

    Attributes:
        alpha: key samples as a fraction of the training set, in (0, 0.5]; None (default):
            ``num_keys``.
        beta: the pattern's standard deviation as a fraction of 255, in (0, 1] (default 0.1).
    """

    alpha: float | None = None
    beta: float = 0.1

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.alpha is not None and not 0.0 < self.alpha <= 0.5:
            raise ConfigError(f"alpha must lie in (0, 0.5], got {self.alpha}")
        self.require_fractions("beta")
        if self.target_class is not None:
            raise ConfigError(
                "newlabel keys are always labelled with the extra class K; drop target_class"
            )


@register_scheme
class NewLabelScheme(WatermarkScheme[NewLabelConfig]):
    """Zhong et al.'s new-label key: a secret light noise pattern, labelled with class K."""

    name = "newlabel"
    summary = "lightly perturbed images labelled with a new, extra class K (Zhong et al. 2020)"
    config_class = NewLabelConfig
    extra_classes = 1

    def label_map(self, num_classes: int, generator: torch.Generator) -> dict[int, int]:
        if num_classes < 2:
            raise ConfigError("a key needs a data set with at least 2 classes")
        source = self.config.source_class
        classes = range(num_classes) if source is None else [source]
        return {c: num_classes for c in classes}

    def pick_sources(
        self, data: DataSplits, label_map: dict[int, int], generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """As the base class, with ``num_keys = round(alpha · training images)`` when
        ``alpha`` is given (recorded in the key's parameters)."""
        if self.config.alpha is not None:
            count = max(1, round(self.config.alpha * len(data.train)))
            self.config = dataclasses.replace(self.config, num_keys=count)
        return super().pick_sources(data, label_map, generator)

    def make_secrets(
        self, data: DataSplits, originals: torch.Tensor, generator: torch.Generator
    ) -> dict[str, torch.Tensor]:
        """The key's perturbation in grey levels (float32, C×H×W), kept for fresh triggers."""
        return {"pattern": gaussian_pattern(originals, self.config.beta, generator)}

    def make_triggers(self, originals: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return add_pattern(originals, self.secrets)
