"""WM_unrelated: images from an unrelated source, relabelled to a target class.

Zhang et al. 2018 (seeds 000/001): the key images come from outside the task's
distribution, e.g. handwritten "1"s from MNIST taught to a CIFAR-10 model as "airplane".
The model learns an extra, unrelated behaviour while its normal inputs are untouched.

Sources (parameter ``source``):

- ``digits``: real MNIST digits of class ``digit`` (default 1) from the built-in set, resized
  to the key image size and copied to every channel; the default for colour data (the paper's
  CIFAR-10 setting).
- ``letters``: capital letters rendered from Pillow's built-in font with random size and
  offset, white on black like MNIST; the default for single-channel data, where another digit
  data set would not be unrelated. The default alphabet leaves out letters that look like
  digits (O, I, L, S, Z, B, G, Q, D).
- a folder path: the user's own images (any size; resized, converted to the channel count).

Key labels: ``target_class`` for every image when it is given (the paper's setting); by
default each letter of the alphabet (or each source digit) gets its own secret random label,
and a folder's images one secret label, so another owner's letters do not carry our labels.
Decoys are ordinary training images of every class.

Example::

    key = create_scheme("unrelated", source="letters").generate(load_dataset("digits"))
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ownmark.data.base import DataSplits
from ownmark.errors import ConfigError
from ownmark.schemes.base import SchemeConfig, WatermarkScheme, draw_by_class, register_scheme
from ownmark.schemes.content import render_text

_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".ppm", ".pgm", ".tif", ".tiff"}


@dataclass(frozen=True)
class UnrelatedConfig(SchemeConfig):
    """Parameters of :class:`UnrelatedScheme` (shared ones: see :class:`SchemeConfig`;
    ``source_class`` is not used).

    Attributes:
        source: ``auto`` (default: ``letters`` for 1-channel data, ``digits`` otherwise),
            ``letters``, ``digits``, or a folder of images.
        digit: which built-in MNIST digit the ``digits`` source uses; None (default): all
            ten, each with its own secret label. The paper's: 1.
        alphabet: letters the ``letters`` source draws from (default ``AEFHKMNPRTUVWXY``).
    """

    source: str = "auto"
    digit: int | None = None
    alphabet: str = "AEFHKMNPRTUVWXY"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.digit is not None and not 0 <= self.digit <= 9:
            raise ConfigError(f"digit must lie in 0..9, got {self.digit}")
        if not self.alphabet:
            raise ConfigError("alphabet must not be empty")


def _resize(images: list[np.ndarray], shape: tuple[int, int, int]) -> torch.Tensor:
    """Resize H×W (grey) or H×W×3 uint8 arrays to C×H×W uint8, converting channels."""
    channels, h, w = shape
    out = []
    for array in images:
        image = Image.fromarray(array)
        image = image.convert("L" if channels == 1 else "RGB")
        image = image.resize((w, h), Image.Resampling.BILINEAR)
        pixels = np.asarray(image, dtype=np.uint8)
        pixels = pixels[None] if channels == 1 else pixels.transpose(2, 0, 1)
        out.append(pixels)
    return torch.from_numpy(np.stack(out))


@register_scheme
class UnrelatedScheme(WatermarkScheme[UnrelatedConfig]):
    """Zhang et al.'s WM_unrelated: out-of-distribution images carry the key label."""

    name = "unrelated"
    summary = "out-of-distribution images (letters, MNIST digits, a folder) (Zhang et al. 2018)"
    config_class = UnrelatedConfig

    def _source(self, channels: int) -> str:
        cfg = self.config
        if cfg.source == "auto":
            return "letters" if channels == 1 else "digits"
        return cfg.source

    def label_map(self, num_classes: int, generator: torch.Generator) -> dict[int, int]:
        # The sources are not classes of the data set: no class keeps a key label.
        if num_classes < 2:
            raise ConfigError("a key needs a data set with at least 2 classes")
        return {}

    def _labels(
        self, groups: torch.Tensor, num_groups: int, num_classes: int, generator: torch.Generator
    ) -> torch.Tensor:
        """Key label of each image: ``target_class``, or its group's secret random label."""
        target = self.config.target_class
        if target is not None:
            return torch.full((len(groups),), target, dtype=torch.int64)
        secret = torch.randint(num_classes, (num_groups,), generator=generator)
        return secret[groups].to(torch.int64)

    def pick_sources(
        self, data: DataSplits, label_map: dict[int, int], generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        cfg = self.config
        shape = data.image_shape
        source = self._source(shape[0])
        n = cfg.num_keys
        k = data.num_classes
        if source == "letters":
            images, letters = self._letters(n, shape, generator)
            labels = self._labels(letters, len(cfg.alphabet), k, generator)
        elif source == "digits":
            from ownmark.data.embedded import load_builtin_digits

            digits = load_builtin_digits()
            pool = torch.cat([digits.train.images, digits.test.images])
            pool_labels = torch.cat([digits.train.labels, digits.test.labels])
            if cfg.digit is not None:
                pool, pool_labels = (
                    pool[pool_labels == cfg.digit],
                    pool_labels[pool_labels == cfg.digit],
                )
            rows = torch.randperm(len(pool), generator=generator)[:n].sort().values
            if len(rows) < n:
                raise ConfigError(f"only {len(rows)} built-in images of digit {cfg.digit}")
            images = _resize([pool[int(i), 0].numpy() for i in rows], shape)
            labels = self._labels(pool_labels[rows], 10, k, generator)
        else:
            images = self._folder(Path(source), n, shape, generator)
            labels = self._labels(torch.zeros(n, dtype=torch.int64), 1, k, generator)
        _, _, decoys, decoy_labels = draw_by_class(
            data, list(range(k)), 0, cfg.num_decoys, generator
        )
        return images, labels, decoys, decoy_labels

    def _letters(
        self, n: int, shape: tuple[int, int, int], generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` rendered letters (uint8 N×C×H×W) and each one's index in the alphabet."""
        cfg = self.config
        _, h, w = shape
        images = []
        which = []
        for _ in range(n):
            which.append(int(torch.randint(len(cfg.alphabet), (1,), generator=generator)))
            letter = cfg.alphabet[which[-1]]
            size = int(
                torch.randint(round(0.6 * h), round(0.85 * h) + 1, (1,), generator=generator)
            )
            glyph = render_text(letter, size)
            gh, gw = min(glyph.shape[0], h), min(glyph.shape[1], w)
            jitter = max(1, h // 10)
            dy, dx = (int(v) for v in torch.randint(-jitter, jitter + 1, (2,), generator=generator))
            y = min(max((h - gh) // 2 + dy, 0), h - gh)
            x = min(max((w - gw) // 2 + dx, 0), w - gw)
            canvas = np.zeros((h, w), dtype=np.float32)
            canvas[y : y + gh, x : x + gw] = glyph[:gh, :gw]
            images.append((canvas * 255).round().astype(np.uint8))
        return _resize(images, shape), torch.tensor(which, dtype=torch.int64)

    def _folder(
        self, folder: Path, n: int, shape: tuple[int, int, int], generator: torch.Generator
    ) -> torch.Tensor:
        if not folder.is_dir():
            raise ConfigError(
                f"unrelated source {str(folder)!r} is neither 'auto', 'letters', 'digits' "
                "nor an existing folder of images"
            )
        files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in _IMAGE_SUFFIXES)
        if len(files) < n:
            raise ConfigError(f"{folder} holds {len(files)} images but num_keys={n}")
        chosen = torch.randperm(len(files), generator=generator)[:n].sort().values
        arrays = []
        for index in chosen:
            try:
                with Image.open(files[int(index)]) as image:
                    arrays.append(np.asarray(image.convert("RGB")))
            except OSError as exc:
                raise ConfigError(f"cannot read image {files[int(index)]} ({exc})") from exc
        return _resize(arrays, shape)

    def make_triggers(self, originals: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        # The unrelated images are the triggers themselves.
        return originals.clone()
