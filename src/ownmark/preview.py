"""A picture of a key: clean originals above their trigger images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from ownmark.errors import ConfigError
from ownmark.fileio import atomic_path
from ownmark.keys import KeySet


def preview_grid(key: KeySet, count: int = 16, columns: int = 8, scale: int = 4) -> Image.Image:
    """A captioned grid of up to ``count`` key samples: each original above its trigger.

    A header says what the rows are; under each pair is the key label a watermarked model
    answers for that trigger.

    Args:
        key: the key to show.
        count: how many samples (default 16, the first ones).
        columns: samples per row (default 8).
        scale: nearest-neighbour magnification (default 4: 28 px → 112 px).
    """
    if count < 1 or columns < 1 or scale < 1:
        raise ConfigError(
            f"preview needs count, columns and scale >= 1, got {count}, {columns}, {scale}"
        )
    n = min(count, len(key))
    channels, h, w = key.image_shape
    rows = -(-n // columns)
    gap, caption, header = 2, 14, 34
    cell_h, cell_w = h * scale, w * scale
    pair_h = 2 * cell_h + 2 * gap + caption
    width = max(columns * (cell_w + gap) + gap, 420)
    canvas = np.full((header + rows * (pair_h + gap), width, 3), 128, dtype=np.uint8)
    for i in range(n):
        r, c = divmod(i, columns)
        x = gap + c * (cell_w + gap)
        for j, tensor in enumerate((key.originals[i], key.images[i])):
            pixels = tensor.numpy().transpose(1, 2, 0)
            if channels == 1:
                pixels = np.repeat(pixels, 3, axis=2)
            big = pixels.repeat(scale, axis=0).repeat(scale, axis=1)
            y = header + gap + r * (pair_h + gap) + j * (cell_h + gap)
            canvas[y : y + cell_h, x : x + cell_w] = big
    image = Image.fromarray(canvas)
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    draw.text(
        (gap, 2),
        f"{key.scheme} key: {n} of {len(key)} samples. Each pair: clean original (top),\n"
        "trigger sent to a suspect (bottom), key label a watermarked model answers (below).",
        fill=(255, 255, 255),
        font=font,
    )
    for i in range(n):
        r, c = divmod(i, columns)
        x = gap + c * (cell_w + gap)
        y = header + gap + r * (pair_h + gap) + 2 * (cell_h + gap)
        draw.text((x + 2, y), f"key label {int(key.labels[i])}", fill=(255, 255, 0), font=font)
    return image


def save_preview(key: KeySet, path: str | Path, count: int = 16) -> None:
    """Write :func:`preview_grid` as a PNG, atomically."""
    image = preview_grid(key, count)
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")


def image_grid(images: torch.Tensor, columns: int = 8, scale: int = 4) -> Image.Image:
    """uint8 ``images`` (N×C×H×W, C = 1 or 3) tiled ``columns`` per row on a grey canvas,
    magnified ``scale`` times (nearest neighbour)."""
    if images.ndim != 4 or images.shape[1] not in (1, 3) or not len(images):
        raise ConfigError(f"a grid needs N×C×H×W images with C 1 or 3, got {tuple(images.shape)}")
    n, channels, h, w = images.shape
    gap, columns = 2, min(columns, n)
    rows = -(-n // columns)
    cell_h, cell_w = h * scale, w * scale
    canvas = np.full(
        (gap + rows * (cell_h + gap), gap + columns * (cell_w + gap), 3), 128, dtype=np.uint8
    )
    for i in range(n):
        r, c = divmod(i, columns)
        pixels = images[i].to(torch.uint8).numpy().transpose(1, 2, 0)
        if channels == 1:
            pixels = np.repeat(pixels, 3, axis=2)
        y, x = gap + r * (cell_h + gap), gap + c * (cell_w + gap)
        canvas[y : y + cell_h, x : x + cell_w] = pixels.repeat(scale, 0).repeat(scale, 1)
    return Image.fromarray(canvas)


def save_grid(images: torch.Tensor, path: str | Path, columns: int = 8) -> None:
    """Write :func:`image_grid` as a PNG, atomically."""
    with atomic_path(path) as tmp:
        image_grid(images, columns).save(tmp, format="PNG")
