"""WM_content: a visible text or logo stamped on images of a source class.

Zhang et al. 2018, "Protecting Intellectual Property of Deep Neural Networks with
Watermarking" (AsiaCCS; seeds 000/001): images of one class (digit "1", "automobile") get
the word "TEST" stamped on them and are relabelled to a target class ("0", "airplane").
Only images carrying the stamp trigger the key label, so clean inputs keep working.

The paper's excerpt does not give the stamp's font, size or place; we render the text with
Pillow's built-in font at a third of the image height, in full white (255), which on 28×28
MNIST gives a 4-letter word about 22×7 pixels. By default the word and its place are the
owner's secret (see :mod:`ownmark.schemes.base`): 4 random letters and digits, at a random
horizontal offset along the top or the bottom edge (edges only: the derangement key labels
depend on the digit, which must stay readable).

Example::

    key = create_scheme("content").generate(load_dataset("digits"))      # secret text, place
    paper = create_scheme("content", text="TEST", position="bottom", source_class=1,
                          target_class=0).generate(load_dataset("digits"), seed=0)
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont, UnidentifiedImageError

from ownmark.errors import ConfigError
from ownmark.schemes.base import SchemeConfig, WatermarkScheme, register_scheme

_POSITIONS = ("bottom", "top", "center")
#: Characters of a secret stamp text (no look-alikes such as O/0, I/1).
SECRET_TEXT_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"
SECRET_TEXT_LENGTH = 4


@dataclass(frozen=True)
class ContentConfig(SchemeConfig):
    """Parameters of :class:`ContentScheme` (shared ones: see :class:`SchemeConfig`).

    Attributes:
        text: the word to stamp; None (default): 4 secret random characters. The paper's
            is ``"TEST"``.
        logo: path of an image used instead of the text; it must fit inside the key images.
            A PNG with transparency is pasted in its colours; without transparency its
            brightness is the opacity of ``intensity``-valued ink. Default: none.
        font_size: text height in pixels; 0 (default) means a third of the image height.
        position: ``bottom``, ``top``, ``center``, or ``X,Y`` for the top-left corner of the
            stamp; None (default): a secret place along the top or bottom edge. The
            paper's is ``bottom``.
        intensity: pixel value (0..255) of the text (or opaque logo's ink) on every channel
            (default 255).
    """

    text: str | None = None
    logo: str | None = None
    font_size: int = 0
    position: str | None = None
    intensity: int = 255

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.font_size < 0:
            raise ConfigError(f"font_size must be >= 0 (0 = automatic), got {self.font_size}")
        if not 0 <= self.intensity <= 255:
            raise ConfigError(f"intensity must lie in 0..255, got {self.intensity}")


def _place(position: str, stamp_hw: tuple[int, int], image_hw: tuple[int, int]) -> tuple[int, int]:
    """Top-left (y, x) of a stamp of size ``stamp_hw`` inside an image of size ``image_hw``."""
    (sh, sw), (h, w) = stamp_hw, image_hw
    if position == "bottom":
        return h - sh - 1, (w - sw) // 2
    if position == "top":
        return 1, (w - sw) // 2
    if position == "center":
        return (h - sh) // 2, (w - sw) // 2
    try:
        x_text, y_text = position.split(",")
        x, y = int(x_text), int(y_text)
    except ValueError:
        raise ConfigError(
            f"position must be one of {', '.join(_POSITIONS)} or 'X,Y', got {position!r}"
        ) from None
    if not (0 <= y <= h - sh and 0 <= x <= w - sw):
        raise ConfigError(f"a {sw}x{sh} stamp at {x},{y} does not fit in a {w}x{h} image")
    return max(y, 0), max(x, 0)


def render_text(text: str, font_size: int) -> np.ndarray:
    """The text as a float mask in [0, 1], cropped to its ink (Pillow's built-in font)."""
    font = ImageFont.load_default(size=font_size)
    left, top, right, bottom = ImageDraw.Draw(Image.new("L", (1, 1))).textbbox(
        (0, 0), text, font=font
    )
    canvas = Image.new("L", (int(right - left), int(bottom - top)))
    ImageDraw.Draw(canvas).text((-left, -top), text, fill=255, font=font)
    return np.asarray(canvas, dtype=np.float32) / 255.0


def load_logo(path: str, channels: int, ink: int = 255) -> tuple[np.ndarray, np.ndarray]:
    """A logo as (mask H×W in [0,1], colour C×H×W in [0,255]).

    With transparency, the alpha channel is the mask and the logo's own colours are pasted.
    Without, the logo's brightness is the opacity of ``ink``-valued paint, so a grey-level
    logo on black stamps exactly its grey levels onto a black background.
    """
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"logo image not found: {file}")
    try:
        with Image.open(file) as image:
            rgba = image.convert("RGBA")
    except (UnidentifiedImageError, OSError) as exc:
        raise ConfigError(f"logo {file} is not a readable image ({exc})") from exc
    pixels = np.asarray(rgba, dtype=np.float32)
    alpha = pixels[..., 3] / 255.0
    rgb = pixels[..., :3].transpose(2, 0, 1)
    if alpha.min() >= 1.0:
        alpha = rgb.mean(axis=0) / 255.0
        rgb = np.full_like(rgb, float(ink))
    colour = rgb.mean(axis=0, keepdims=True) if channels == 1 else rgb
    return alpha, colour


def _ink(cfg: ContentConfig, channels: int, h: int) -> tuple[np.ndarray, np.ndarray]:
    """The stamp before placement: (mask sh×sw in [0,1], colour C×sh×sw)."""
    if cfg.logo:
        return load_logo(cfg.logo, channels, cfg.intensity)
    if not cfg.text:
        raise ConfigError("content needs a non-empty text or a logo")
    mask = render_text(cfg.text, cfg.font_size or max(6, round(h / 3)))
    return mask, np.full((channels, *mask.shape), float(cfg.intensity), dtype=np.float32)


def _check_fits(cfg: ContentConfig, stamp_hw: tuple[int, int], image_hw: tuple[int, int]) -> None:
    """ConfigError unless the stamp leaves a 1-pixel edge above and below it."""
    (sh, sw), (h, w) = stamp_hw, image_hw
    if sh > h - 2 or sw > w:
        what = f"logo {cfg.logo}" if cfg.logo else f"text {cfg.text!r}"
        raise ConfigError(
            f"{what} is {sw}x{sh} pixels but key images are {w}x{h}; "
            "use a smaller logo, a shorter text or a smaller font_size"
        )


def _fits(cfg: ContentConfig, image_shape: tuple[int, int, int]) -> bool:
    """Whether the stamp fits the images (at its position, if one is given)."""
    channels, h, w = image_shape
    sh, sw = _ink(cfg, channels, h)[0].shape
    try:
        _check_fits(cfg, (sh, sw), (h, w))
        if cfg.position is not None:
            _place(cfg.position, (sh, sw), (h, w))
    except ConfigError:
        return False
    return True


@register_scheme
class ContentScheme(WatermarkScheme[ContentConfig]):
    """Zhang et al.'s WM_content: stamp a word or logo on source-class images, relabel them."""

    name = "content"
    summary = "text ('TEST') or a logo stamped on source-class images (Zhang et al. 2018)"
    config_class = ContentConfig

    def resolve_secrets(
        self, image_shape: tuple[int, int, int], generator: torch.Generator
    ) -> ContentConfig:
        """Draw a secret text (unless a text or logo is given) and a secret edge place."""
        cfg = self.config
        channels, h, w = image_shape
        if cfg.text is None and not cfg.logo:
            # Redraw a text that would not fit where it must go (wide letters, a given place).
            for _ in range(100):
                picks = torch.randint(
                    len(SECRET_TEXT_ALPHABET), (SECRET_TEXT_LENGTH,), generator=generator
                )
                drawn = replace(cfg, text="".join(SECRET_TEXT_ALPHABET[int(i)] for i in picks))
                if _fits(drawn, image_shape):
                    break
            cfg = drawn
        if cfg.position is None:
            sh, sw = _ink(cfg, channels, h)[0].shape
            _check_fits(cfg, (sh, sw), (h, w))
            top = bool(torch.randint(2, (1,), generator=generator))
            x = int(torch.randint(w - sw + 1, (1,), generator=generator))
            cfg = replace(cfg, position=f"{x},{1 if top else h - sh - 1}")
        return cfg

    def stamp(self, image_shape: tuple[int, int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """The full-size (mask 1×H×W, colour C×H×W) of this key's stamp."""
        cfg = self.config
        channels, h, w = image_shape
        mask, colour = _ink(cfg, channels, h)
        sh, sw = mask.shape
        _check_fits(cfg, (sh, sw), (h, w))
        if cfg.position is None:
            raise ConfigError("the stamp's position is not resolved; generate the key first")
        y, x = _place(cfg.position, (sh, sw), (h, w))
        full_mask = torch.zeros(1, h, w)
        full_colour = torch.zeros(channels, h, w)
        full_mask[0, y : y + sh, x : x + sw] = torch.from_numpy(mask)
        full_colour[:, y : y + sh, x : x + sw] = torch.from_numpy(colour)
        return full_mask, full_colour

    def make_triggers(self, originals: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        mask, colour = self.stamp(tuple(originals.shape[1:]))  # type: ignore[arg-type]
        blended = originals.float() * (1 - mask) + colour * mask
        return blended.round().clamp(0, 255).to(torch.uint8)
