"""Scripted suspects for verifier and evidence tests: a constant API and a watermarked one."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ownmark.keys import KeySet
from ownmark.verify import image_sha256


class FixedAnswers:
    """A scripted suspect: the same answer for every image (a constant or broken API)."""

    address = "scripted"

    def __init__(self, answer: object, fail: bool = False) -> None:
        self.answer = answer
        self.fail = fail
        self.seen = 0
        self.calls: list[int] = []

    def query(self, images: torch.Tensor) -> Sequence[object]:
        self.seen += len(images)
        self.calls.append(len(images))
        if self.fail:
            raise TimeoutError("suspect did not answer")
        return [self.answer] * len(images)


class Watermarked(FixedAnswers):
    """Answers like a watermarked working model: key label on key images, true label on decoys.

    ``miss``: key rows it gets wrong (answers their source class instead).
    """

    def __init__(self, key: KeySet, miss: frozenset[int] = frozenset()) -> None:
        super().__init__(None)
        self.answers = {
            image_sha256(img): int(lab)
            for img, lab in zip(key.decoys, key.decoy_labels, strict=True)
        }
        for row, (img, lab) in enumerate(zip(key.images, key.labels, strict=True)):
            self.answers[image_sha256(img)] = 1 if row in miss else int(lab)

    def query(self, images: torch.Tensor) -> Sequence[object]:
        super().query(images)
        return [self.answers.get(image_sha256(image), 5) for image in images]
