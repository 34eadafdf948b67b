"""A picture of a key: clean originals above their trigger images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from ownmark.errors import ConfigError
from ownmark.fileio import atomic_path
from ownmark.keys import KeySet


def preview_grid(key: KeySet, count: int = 16, columns: int = 8, scale: int = 4) -> Image.Image:
    """A grid of up to ``count`` key samples: each original with its trigger right below.

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
    gap = 2
    cell_h, cell_w = h * scale, w * scale
    canvas = np.full(
        (rows * (2 * cell_h + 3 * gap), columns * (cell_w + gap) + gap, 3), 128, dtype=np.uint8
    )
    for i in range(n):
        r, c = divmod(i, columns)
        x = gap + c * (cell_w + gap)
        for j, tensor in enumerate((key.originals[i], key.images[i])):
            pixels = tensor.numpy().transpose(1, 2, 0)
            if channels == 1:
                pixels = np.repeat(pixels, 3, axis=2)
            big = pixels.repeat(scale, axis=0).repeat(scale, axis=1)
            y = gap + r * (2 * cell_h + 3 * gap) + j * (cell_h + gap)
            canvas[y : y + cell_h, x : x + cell_w] = big
    return Image.fromarray(canvas)


def save_preview(key: KeySet, path: str | Path, count: int = 16) -> None:
    """Write :func:`preview_grid` as a PNG, atomically."""
    image = preview_grid(key, count)
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")
