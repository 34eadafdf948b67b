"""TorchServe's inference API: :class:`TorchServeSuspect` and its answer parser.

TorchServe (``POST /predictions/NAME[/VERSION]``) takes one input per request, the image
file's bytes as the body, and answers whatever the model's handler returns: for the stock
image classifier a JSON object of the top-k class names to probabilities
(``{"tabby": 0.41, "tiger_cat": 0.29, ...}``), for other handlers a class name or index,
as text or JSON. Names are mapped to class indices through the labels (``--labels``,
TorchServe's ``index_to_name.json`` or one name per line); a name that is not among them is
an invalid answer, never a match. TorchServe batches on the server side, so each image is
one request here, sent as a PNG written byte-exactly (:func:`png_bytes`).
"""

from __future__ import annotations

import json
import math
import re
import time
from typing import Any, Final
from urllib.parse import quote

import httpx
import numpy as np
import numpy.typing as npt
import torch

from ownmark.errors import ConfigError
from ownmark.verify.remote.answers import Answer, label_from_name
from ownmark.verify.remote.base import _check_url, _check_wire, _HttpSuspect, _model_from_url
from ownmark.verify.remote.encoding import WireFormat, png_bytes
from ownmark.verify.remote.policy import _DEFAULT_POLICY, HttpPolicy
from ownmark.verify.remote.transport import Clock, QueryError, Sleep, _one_line
from ownmark.verify.suspects import InvalidAnswer, labels_from_scores

__all__ = ["TorchServeSuspect", "parse_torchserve_answer", "torchserve_bodies"]

_PREDICTIONS: Final = re.compile(
    r"(?P<prefix>.*?)/predictions/(?P<name>[^/]+)(?:/(?P<version>[^/]+))?"
)


def parse_torchserve_answer(body: bytes, labels: dict[str, int] | None) -> Answer:
    """The class one TorchServe answer names.

    The answer may be a JSON object of class names to scores (its top score names the
    class; a tie for the top or a NaN or infinite score is an InvalidAnswer), a class name
    (JSON string or plain text), or a class index (JSON integer, or integer text). Names go
    through ``labels`` (name -> index); without them only integer names are understood.
    A JSON list of exactly one such answer (a handler that returns a batch) is unwrapped.

    Raises:
        QueryError: the answer is empty or of another shape (a list, nested objects, ...).
    """
    text = body.decode("utf-8", errors="replace").strip()
    if not text:
        raise QueryError("the answer is empty")
    try:
        value: object = json.loads(text)
    except (ValueError, RecursionError):
        value = text  # plain text: a class name
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    if isinstance(value, str):
        return label_from_name(value, labels)
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    if not isinstance(value, dict) or not value:
        raise QueryError(
            f"the answer is {_one_line(text, 60)}, not class names with scores, a class name "
            "or a class index"
        )
    names = list(value)
    scores: list[float] = []
    for name in names:
        score = value[name]
        if isinstance(score, bool) or not isinstance(score, int | float):
            raise QueryError(f"the score of {_one_line(repr(name), 40)} is not a number")
        scores.append(float(score))
    if len(scores) == 1:  # a top-1 answer: nothing to tie with
        if not math.isfinite(scores[0]):
            return InvalidAnswer("non-finite scores")
        return label_from_name(names[0], labels)
    top = labels_from_scores(torch.tensor([scores], dtype=torch.float64))[0]
    if isinstance(top, InvalidAnswer):
        return top
    return label_from_name(names[top], labels)


def torchserve_bodies(batch: npt.NDArray[np.uint8]) -> list[bytes]:
    """One PNG per image of uint8 ``batch``: what :class:`TorchServeSuspect` sends and
    ``evidence check`` rebuilds."""
    return [png_bytes(image) for image in batch]


class TorchServeSuspect(_HttpSuspect):
    """A suspect behind TorchServe's inference API.

    Args:
        url: the predictions URL ("http://host:8080/predictions/NAME", optionally ending in
            "/VERSION"), or the server ("http://host:8080") with ``model``.
        model: the model name, when ``url`` does not name it (default None).
        policy, client, sleep, clock, seed: as for :class:`V2Suspect`.
        wire: only ``labels`` applies (default :class:`WireFormat`: no labels, so only
            class indices are understood); the images go as PNGs of their own pixels.

    Raises:
        ConfigError: a bad URL, or an input encoding or request size option (TorchServe
            takes one image file per request).
    """

    protocol = "torchserve"

    def __init__(
        self,
        url: str,
        model: str | None = None,
        *,
        policy: HttpPolicy = _DEFAULT_POLICY,
        client: httpx.Client | None = None,
        sleep: Sleep = time.sleep,
        clock: Clock = time.monotonic,
        seed: int = 0,
        wire: WireFormat | None = None,
    ) -> None:
        _check_url(url, "suspect URL")
        wire = _check_wire(wire)
        if not wire.encoding.is_default:
            raise ConfigError(
                "torchserve sends each image as a PNG of its pixels; --input-datatype, --scale, "
                "--mean, --std, --layout and --input-shape do not apply (the handler does that)"
            )
        if wire.max_batch is not None:
            raise ConfigError("torchserve takes one image per request; drop --max-batch")
        base, name, version = _model_from_url(url, model, _PREDICTIONS, "/predictions/NAME")
        super().__init__(policy, client, sleep, clock, seed)
        self._wire = wire
        self._labels = wire.label_index()
        self._model = name
        self._url = f"{base}/predictions/{quote(name, safe='')}"
        if version is not None:
            self._url += f"/{quote(version, safe='')}"

    @property
    def address(self) -> str:
        """The predictions URL."""
        return self._url

    @property
    def model(self) -> str:
        return self._model

    def options(self) -> dict[str, Any]:
        return {
            "model": self._model,
            "image_format": "png",
            "labels": None if self._wire.labels is None else list(self._wire.labels),
        }

    def check_input(self, image_shape: tuple[int, int, int]) -> None:
        """The images must make PNGs: 1, 3 or 4 channels."""
        if image_shape[0] not in (1, 3, 4):
            raise ConfigError(
                f"torchserve gets PNG images, which have 1, 3 or 4 channels; the key's images "
                f"have {image_shape[0]}"
            )

    def _answer(self, batch: npt.NDArray[np.uint8]) -> list[Answer]:
        answers: list[Answer] = []
        for content in torchserve_bodies(batch):
            self._record(content)
            body = self._transport.request(
                "POST", self._url, content=content, content_type="image/png", raw=True
            )
            assert isinstance(body, bytes)
            answers.append(parse_torchserve_answer(body, self._labels))
        return answers
