"""Copyright images that hiding schemes put into their triggers: ownmark's default logo, a
user's logo file, or a line of text, each as uint8 C×H×W of the data's shape (DeepStego,
seed 002, hides a logo; UDH, seed 004, a logo or text such as "licensee 17")."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont, UnidentifiedImageError

from ownmark.errors import ConfigError


def default_logo(channels: int, height: int, width: int) -> torch.Tensor:
    """ownmark's mark: "OM" in PIL's built-in bitmap font inside a frame, white on black,
    drawn at 64×64 and resized (uint8 C×H×W)."""
    side = 64
    canvas = Image.new("L", (side, side), 0)
    draw = ImageDraw.Draw(canvas)
    draw.rectangle((2, 2, side - 3, side - 3), outline=255, width=4)
    font = ImageFont.load_default()
    left, top, right, bottom = draw.textbbox((0, 0), "OM", font=font)
    text = Image.new("L", (int(right - left), int(bottom - top)), 0)
    ImageDraw.Draw(text).text((-left, -top), "OM", fill=255, font=font)
    text = text.resize((side - 20, (side - 20) * text.height // max(text.width, 1)))
    canvas.paste(text, ((side - text.width) // 2, (side - text.height) // 2))
    return image_to_tensor(canvas, channels, height, width)


def load_logo(path: str, channels: int, height: int, width: int) -> torch.Tensor:
    """The image at ``path`` as a uint8 C×H×W logo (grey for 1 channel, RGB for 3)."""
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"logo image not found: {file}; give the path of an image file")
    try:
        with Image.open(file) as image:
            image.load()
            picture = image.convert("L" if channels == 1 else "RGB")
    except (UnidentifiedImageError, OSError) as exc:
        raise ConfigError(f"logo {file} is not a readable image ({exc})") from exc
    return image_to_tensor(picture, channels, height, width)


def image_to_tensor(picture: Image.Image, channels: int, height: int, width: int) -> torch.Tensor:
    """``picture`` resized to W×H, as uint8 C×H×W (grey repeated for channel counts other
    than 1 and 3)."""
    mode = "L" if channels == 1 else "RGB"
    resized = picture.convert(mode).resize((width, height), Image.Resampling.BILINEAR)
    pixels = np.asarray(resized, dtype=np.uint8)
    out = torch.from_numpy(pixels.copy())
    out = out.unsqueeze(0) if out.dim() == 2 else out.permute(2, 0, 1)
    if out.shape[0] != channels:  # other channel counts: repeat the grey image
        out = out.float().mean(0, keepdim=True).round().to(torch.uint8).repeat(channels, 1, 1)
    return out.contiguous()


def text_image(text: str, channels: int, height: int, width: int) -> torch.Tensor:
    """``text`` rendered white on black with PIL's built-in font, word-wrapped to fit, drawn
    at 4x and resized to C×H×W (uint8)."""
    scale = 4
    canvas = Image.new("L", (width * scale, height * scale), 0)
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    lines = text.split() if len(text) > 8 else [text]
    heights = [draw.textbbox((0, 0), line, font=font) for line in lines]
    blocks = []
    for line, (left, top, right, bottom) in zip(lines, heights, strict=True):
        block = Image.new("L", (int(right - left) + 2, int(bottom - top) + 2), 0)
        ImageDraw.Draw(block).text((1 - left, 1 - top), line, fill=255, font=font)
        blocks.append(block)
    row_height = (height * scale) // len(blocks)
    for i, block in enumerate(blocks):
        fit = min((width * scale - 4) / block.width, (row_height - 2) / block.height)
        block = block.resize((max(1, int(block.width * fit)), max(1, int(block.height * fit))))
        canvas.paste(block, ((width * scale - block.width) // 2, i * row_height + 1))
    small = canvas.resize((width, height), Image.Resampling.BILINEAR)
    out = torch.from_numpy(np.asarray(small, dtype=np.uint8).copy()).unsqueeze(0)
    return out.repeat(channels, 1, 1).contiguous()
