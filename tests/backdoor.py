"""A planted backdoor for the detection and removal attack tests.

A small LeNet-5 learns the built-in digits while every image that carries a white square in
its bottom-right corner is labelled ``TARGET``: the classic patch backdoor (BadNets) that
Neural Cleanse and STRIP were built to find. Trained once per test session, in seconds.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch
import torch.nn.functional as F

from ownmark.data import DataSplits, load_dataset
from ownmark.metrics import predict, to_float_images
from ownmark.models import Classifier, ModelSpec, build_model

#: The backdoor's label.
TARGET = 3
#: Side of the white square, in pixels.
PATCH = 4


def stamp(images: torch.Tensor) -> torch.Tensor:
    """uint8 ``images`` with the white square in the bottom-right corner."""
    stamped = images.clone()
    stamped[..., -PATCH - 1 : -1, -PATCH - 1 : -1] = 255
    return stamped


@dataclass(frozen=True)
class Backdoored:
    model: Classifier
    clean: torch.Tensor  # test images, uint8
    clean_labels: torch.Tensor
    triggered: torch.Tensor  # the same test images stamped (their true class is not TARGET)
    attack_success: float  # share of ``triggered`` the model answers TARGET


@lru_cache(maxsize=1)
def backdoored_lenet(epochs: int = 4, seed: int = 0) -> Backdoored:
    data: DataSplits = load_dataset("digits")
    train = data.train.subset(torch.arange(2000), "digits/train[:2000]")
    generator = torch.Generator().manual_seed(seed)
    poisoned = torch.rand(len(train), generator=generator) < 0.1
    images = train.images.clone()
    labels = train.labels.clone()
    images[poisoned] = stamp(images[poisoned])
    labels[poisoned] = TARGET
    torch.manual_seed(seed)
    model = build_model(ModelSpec.with_defaults("lenet5", 10, 1, (28, 28)))
    optimiser = torch.optim.Adam(model.parameters(), lr=2e-3)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(images), generator=generator)
        for start in range(0, len(order), 64):
            rows = order[start : start + 64]
            loss = F.cross_entropy(model(to_float_images(images[rows])), labels[rows])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    model.eval()
    test = data.test.subset(torch.arange(400), "digits/test[:400]")
    others = test.labels != TARGET
    triggered = stamp(test.images[others])
    success = float((predict(model, triggered) == TARGET).float().mean())
    return Backdoored(model, test.images, test.labels, triggered, success)
