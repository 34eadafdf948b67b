"""Any other JSON API, described by a template: :class:`TemplateSuspect`.

The template language says where the images go in the request (the string ``"$images"``
anywhere in the body, encoded ``nested``, ``flat`` or ``png_base64``) and where the answers
are in the response (a dotted path, ``*`` mapping over a list). Templates are checked when
read, with every problem naming its field.
"""

from __future__ import annotations

import base64
import io
import json
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import httpx
import numpy as np
import numpy.typing as npt
import torch

from ownmark.errors import ConfigError
from ownmark.verify.remote.answers import Answer, normalize_answers
from ownmark.verify.remote.base import _check_url, _HttpSuspect
from ownmark.verify.remote.policy import _DEFAULT_POLICY, HttpPolicy
from ownmark.verify.remote.transport import Clock, QueryError, Sleep, _one_line, _reason

__all__ = ["ENCODINGS", "TemplateSuspect"]

#: How a :class:`TemplateSuspect` puts the image batch into the request body.
ENCODINGS: Final = ("nested", "flat", "png_base64")
_TEMPLATE_FIELDS: Final = ("url", "method", "headers", "encoding", "body", "answers")
_IMAGES: Final = "$images"


@dataclass(frozen=True)
class _Template:
    url: str | None
    method: str
    headers: tuple[tuple[str, str], ...]
    encoding: str
    body: object
    answers: tuple[str, ...]


def _read_template(template: Mapping[str, Any] | str | os.PathLike[str]) -> _Template:
    """Parse and check a template; every problem is a ConfigError naming the field."""
    if isinstance(template, Mapping):
        raw: object = dict(template)
        source = "the template"
    else:
        path = Path(template)
        source = f"template {path}"
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise ConfigError(f"template file {path} does not exist") from exc
        except OSError as exc:
            raise ConfigError(f"cannot read template file {path} ({_reason(exc)})") from exc
        except json.JSONDecodeError as exc:
            raise ConfigError(
                f"template {path} is not valid JSON (line {exc.lineno}: {exc.msg})"
            ) from exc
        except (ValueError, RecursionError) as exc:
            raise ConfigError(f"template {path} is not valid JSON ({_one_line(exc)})") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{source} must be a JSON object")
    unknown = sorted(str(k) for k in raw if k not in _TEMPLATE_FIELDS)
    if unknown:
        raise ConfigError(
            f"{source} has unknown field {unknown[0]!r}; fields: {', '.join(_TEMPLATE_FIELDS)}"
        )

    def bad(field: str, why: str) -> ConfigError:
        return ConfigError(f"{source}: field {field!r} {why}")

    url = raw.get("url")
    if url is not None:
        if not isinstance(url, str):
            raise bad("url", "must be a URL string")
        _check_url(url, f"{source}: field 'url'")
    method = raw.get("method", "POST")
    if not isinstance(method, str) or method.upper() not in ("POST", "PUT"):
        raise bad("method", f"must be POST or PUT, got {method!r}")
    headers = raw.get("headers", {})
    if not isinstance(headers, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in headers.items()
    ):
        raise bad("headers", "must be an object of header names to text values")
    try:
        HttpPolicy(headers=tuple(headers.items()))  # reuse the header checks
    except ConfigError as exc:
        raise bad("headers", f"is invalid: {exc}") from exc
    encoding = raw.get("encoding", "nested")
    if encoding not in ENCODINGS:
        raise bad("encoding", f"must be one of {', '.join(ENCODINGS)}, got {encoding!r}")
    body = raw.get("body", {"instances": _IMAGES})
    try:
        json.dumps(body, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise bad("body", f"is not plain JSON ({_one_line(exc)})") from exc
    if not _mentions_images(body):
        raise bad("body", f'never mentions "{_IMAGES}", so the images would not be sent')
    answers = raw.get("answers", "predictions")
    if not isinstance(answers, str):
        raise bad("answers", "must be a dotted path such as 'predictions.*.label'")
    segments = tuple(answers.split(".")) if answers else ()
    if any(not s for s in segments):
        raise bad("answers", f"{answers!r} has an empty step; write e.g. 'predictions.*.label'")
    return _Template(url, method.upper(), tuple(headers.items()), encoding, body, segments)


def _encode_images(batch: npt.NDArray[np.uint8], encoding: str) -> object:
    if encoding == "nested":
        return batch.tolist()
    if encoding == "flat":
        return batch.reshape(-1).tolist()
    from PIL import Image  # only this encoding needs Pillow

    channels = batch.shape[1]
    if channels not in (1, 3, 4):
        raise ConfigError(
            f"png_base64 needs images with 1, 3 or 4 channels, got {channels}; "
            "use the nested or flat encoding"
        )
    encoded: list[str] = []
    for image in batch:
        # Pillow wants H×W (mode L) or H×W×C (RGB, RGBA).
        pixels = image[0] if channels == 1 else np.ascontiguousarray(image.transpose(1, 2, 0))
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="PNG")
        encoded.append(base64.b64encode(buffer.getvalue()).decode("ascii"))
    return encoded


def _mentions_images(body: object) -> bool:
    if body == _IMAGES:
        return True
    if isinstance(body, dict):
        return any(_mentions_images(value) for value in body.values())
    return isinstance(body, list) and any(_mentions_images(value) for value in body)


def _fill(body: object, images: object) -> object:
    """``body`` with every string "$images" replaced by the encoded batch."""
    if body == _IMAGES:
        return images
    if isinstance(body, dict):
        return {key: _fill(value, images) for key, value in body.items()}
    if isinstance(body, list):
        return [_fill(value, images) for value in body]
    return body


def _follow(value: object, segments: Sequence[str], done: str = "") -> object:
    """The value at a dotted path; ``*`` maps the rest of the path over a list."""
    for position, segment in enumerate(segments):
        here = f"{done}.{segment}" if done else segment
        if segment == "*":
            if not isinstance(value, list):
                raise QueryError(f"the answer's {done or 'top level'!r} is not a list")
            rest = segments[position + 1 :]
            return [
                _follow(item, rest, f"{done}.{i}" if done else str(i))
                for i, item in enumerate(value)
            ]
        if isinstance(value, dict) and segment in value:
            value = value[segment]
        elif isinstance(value, list) and segment.isascii() and segment.isdigit():
            if int(segment) >= len(value):
                raise QueryError(f"the answer has no {here!r} (the list has {len(value)} items)")
            value = value[int(segment)]
        else:
            raise QueryError(f"the answer has no {_one_line(here, 80)!r}")
        done = here
    return value


class TemplateSuspect(_HttpSuspect):
    """A suspect behind any JSON API, described by a template (a dict or a JSON file).

    Template fields (defaults in brackets):

    * ``url``: where to send the batch [required unless ``url`` is passed here];
    * ``method``: POST or PUT [POST];
    * ``headers``: extra headers, e.g. ``{"X-Api-Key": "..."}`` [none];
    * ``encoding``: how images are sent [nested]: ``nested`` (N×C×H×W lists of ints),
      ``flat`` (one row-major list) or ``png_base64`` (one base64 PNG per image: mode L for
      1 channel, RGB for 3, RGBA for 4);
    * ``body``: the JSON body; the string "$images" anywhere in it becomes the encoded batch
      [``{"instances": "$images"}``];
    * ``answers``: dotted path to the answers in the response; ``*`` maps over a list and a
      number indexes one, e.g. "labels", "predictions.*.label", "outputs.0.data"
      [predictions]. See :func:`normalize_answers` for what an answer may be.

    Args:
        template: the template, or the path of its JSON file.
        url: overrides the template's ``url`` (default None).
        policy, client, sleep, clock, seed: as for :class:`V2Suspect`.

    Raises:
        ConfigError: the template is invalid (the message names the field).
    """

    protocol = "template"

    def __init__(
        self,
        template: Mapping[str, Any] | str | os.PathLike[str],
        *,
        url: str | None = None,
        policy: HttpPolicy = _DEFAULT_POLICY,
        client: httpx.Client | None = None,
        sleep: Sleep = time.sleep,
        clock: Clock = time.monotonic,
        seed: int = 0,
    ) -> None:
        self._template = _read_template(template)
        if url is not None:
            _check_url(url, "suspect URL")
        target = url if url is not None else self._template.url
        if target is None:
            raise ConfigError("the template has no field 'url'; add it or give the URL")
        super().__init__(policy, client, sleep, clock, seed)
        self._url = target

    @property
    def address(self) -> str:
        return self._url

    def query(self, images: torch.Tensor) -> list[Answer]:
        """One label per image, from one request.

        Raises:
            ConfigError: ``images`` is not a uint8 N×C×H×W tensor.
            QueryError: the request failed or the answer is invalid.
        """
        batch = self._take(images)
        if batch is None:
            return []
        count = int(batch.shape[0])
        body = _fill(self._template.body, _encode_images(batch, self._template.encoding))
        payload = self._transport.request(
            self._template.method, self._url, body=body, headers=dict(self._template.headers)
        )
        return normalize_answers(_follow(payload, self._template.answers), count)
