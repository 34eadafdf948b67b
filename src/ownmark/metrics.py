"""Pure metric functions: they return numbers and never print (like RobustBench's)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def to_float_images(images: torch.Tensor) -> torch.Tensor:
    """uint8 pixels 0..255 → float in [0, 1], the input every ownmark model expects."""
    return images.float().div_(255.0)


@torch.no_grad()
def logits(
    model: nn.Module, images: torch.Tensor, batch_size: int = 512, device: str | None = None
) -> torch.Tensor:
    """Scores (float, N×K, on CPU) of ``model`` for uint8 ``images`` (N×C×H×W).

    The model's train/eval mode is restored afterwards.
    """
    was_training = model.training
    model.eval()
    target = device or next(iter(model.parameters())).device.type
    outputs = []
    try:
        for start in range(0, len(images), batch_size):
            batch = to_float_images(images[start : start + batch_size].to(target))
            outputs.append(model(batch).cpu())
    finally:
        model.train(was_training)
    return torch.cat(outputs) if outputs else torch.empty(0, 0)


def predict(
    model: nn.Module, images: torch.Tensor, batch_size: int = 512, device: str | None = None
) -> torch.Tensor:
    """Top-1 labels (int64, on CPU) of ``model`` for uint8 ``images`` (N×C×H×W)."""
    if len(images) == 0:
        return torch.empty(0, dtype=torch.int64)
    return logits(model, images, batch_size, device).argmax(dim=1)


def answer_accuracy(
    suspect: Any, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 256
) -> float:
    """Fraction of ``images`` a suspect (``query(images) -> labels``) answers with ``labels``.

    Any answer that is not the expected int label (an invalid answer, a wrong type) counts
    as wrong, like a failed query in verification.
    """
    if len(images) == 0:
        return 0.0
    right = 0
    for start in range(0, len(images), batch_size):
        answers = list(suspect.query(images[start : start + batch_size]))
        expected = labels[start : start + batch_size].tolist()
        right += sum(
            isinstance(a, int) and not isinstance(a, bool) and a == e
            for a, e in zip(answers, expected, strict=False)
        )
    return right / len(images)


def accuracy(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 512
) -> float:
    """Fraction of ``images`` whose top-1 prediction equals ``labels`` (0.0 for no images)."""
    if len(images) == 0:
        return 0.0
    return float((predict(model, images, batch_size) == labels.cpu()).float().mean())
