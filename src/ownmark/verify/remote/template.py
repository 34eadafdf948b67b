"""Any other JSON API, described by a template: :class:`TemplateSuspect`.

The template language says where the images go in the request (the string ``"$images"``
anywhere in the body, encoded ``nested``, ``flat`` or ``png_base64``; ``"$batch"`` becomes
the number of images in the request) and where the answers are in the response (a dotted
path, ``*`` mapping over a list). Templates are checked when read, with every problem naming
its field. Pixel scaling, normalisation, layout, the request size and label names come from
:class:`~ownmark.verify.remote.encoding.WireFormat` (the command line's options).
"""

from __future__ import annotations

import base64
import json
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Final

import httpx
import numpy as np
import numpy.typing as npt

from ownmark.errors import ConfigError
from ownmark.verify.remote.answers import Answer, normalize_answers
from ownmark.verify.remote.base import _check_url, _check_wire, _chunks, _HttpSuspect
from ownmark.verify.remote.encoding import InputEncoding, WireFormat, png_bytes
from ownmark.verify.remote.policy import _DEFAULT_POLICY, HttpPolicy
from ownmark.verify.remote.transport import (
    Clock,
    QueryError,
    Sleep,
    _one_line,
    _reason,
    json_bytes,
)

__all__ = ["ENCODINGS", "TemplateSuspect", "template_bodies"]

#: How a :class:`TemplateSuspect` puts the image batch into the request body.
ENCODINGS: Final = ("nested", "flat", "png_base64")
_TEMPLATE_FIELDS: Final = ("url", "method", "headers", "encoding", "body", "answers", "max_batch")
_IMAGES: Final = "$images"
_BATCH: Final = "$batch"


@dataclass(frozen=True)
class _Template:
    url: str | None
    method: str
    headers: tuple[tuple[str, str], ...]
    encoding: str
    body: object
    answers: tuple[str, ...]
    max_batch: int | None = None

    def describe(self) -> dict[str, Any]:
        """Everything but the URL and header values (which may hold credentials)."""
        return {
            "method": self.method,
            "header_names": [name for name, _ in self.headers],
            "encoding": self.encoding,
            "body": self.body,
            "answers": ".".join(self.answers),
            "max_batch": self.max_batch,
        }


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
    max_batch = raw.get("max_batch")
    if max_batch is not None and (
        isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 1
    ):
        raise bad("max_batch", f"must be a whole number of images, 1 or more, got {max_batch!r}")
    return _Template(
        url, method.upper(), tuple(headers.items()), encoding, body, segments, max_batch
    )


def _template_from_record(doc: dict[str, Any]) -> _Template:
    """The template an evidence file describes (see :meth:`_Template.describe`)."""
    return _read_template(
        {
            "method": doc["method"],
            "encoding": doc["encoding"],
            "body": doc["body"],
            "answers": doc["answers"],
            "max_batch": doc["max_batch"],
        }
    )


def _encode_images(batch: npt.NDArray[np.uint8], encoding: str, tensor: InputEncoding) -> object:
    if encoding == "png_base64":
        if not tensor.is_default:
            raise ConfigError(
                "png_base64 sends the images' own pixels; --input-datatype, --scale, --mean, "
                "--std, --layout and --input-shape apply to the nested and flat encodings"
            )
        return [base64.b64encode(png_bytes(image)).decode("ascii") for image in batch]
    encoded = tensor.encode(batch)
    return encoded.tolist() if encoding == "nested" else encoded.reshape(-1).tolist()


def template_bodies(
    batch: npt.NDArray[np.uint8], template: _Template, tensor: InputEncoding
) -> list[bytes]:
    """The request bodies for uint8 images ``batch``, one per ``template.max_batch`` images:
    what :class:`TemplateSuspect` sends and ``evidence check`` rebuilds."""
    bodies = []
    for start, stop in _chunks(int(batch.shape[0]), template.max_batch):
        part = batch[start:stop]
        filled = _fill(template.body, _encode_images(part, template.encoding, tensor), stop - start)
        bodies.append(json_bytes(filled))
    return bodies


def _mentions_images(body: object) -> bool:
    if body == _IMAGES:
        return True
    if isinstance(body, dict):
        return any(_mentions_images(value) for value in body.values())
    return isinstance(body, list) and any(_mentions_images(value) for value in body)


def _fill(body: object, images: object, count: int) -> object:
    """``body`` with every string "$images" replaced by the encoded batch and every "$batch"
    by the number of images in it."""
    if body == _IMAGES:
        return images
    if body == _BATCH:
        return count
    if isinstance(body, dict):
        return {key: _fill(value, images, count) for key, value in body.items()}
    if isinstance(body, list):
        return [_fill(value, images, count) for value in body]
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
    * ``headers``: extra headers, e.g. ``{"X-Api-Key": "..."}`` [none]; the evidence records
      their names, never their values;
    * ``encoding``: how images are sent [nested]: ``nested`` (N×C×H×W lists of numbers, or
      the shape and values ``wire.encoding`` gives), ``flat`` (one row-major list) or
      ``png_base64`` (one base64 PNG per image: gray for 1 channel, RGB for 3, RGBA for 4);
    * ``body``: the JSON body; the string "$images" anywhere in it becomes the encoded batch
      and "$batch" the number of images in the request [``{"instances": "$images"}``];
    * ``answers``: dotted path to the answers in the response; ``*`` maps over a list and a
      number indexes one, e.g. "labels", "predictions.*.label", "outputs.0.data"
      [predictions]. See :func:`normalize_answers` for what an answer may be; with
      ``wire.labels`` an answer may also be a label name;
    * ``max_batch``: most images per request [each query is one request]; ``--max-batch``
      (``wire.max_batch``) overrides it.

    Args:
        template: the template, or the path of its JSON file.
        url: overrides the template's ``url`` (default None).
        policy, client, sleep, clock, seed: as for :class:`V2Suspect`.
        wire: pixel datatype, scaling, normalisation, layout and shape for the nested and
            flat encodings, the request size and label names (default :class:`WireFormat`:
            raw pixels 0..255, NCHW; its v2 fields do not apply).

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
        wire: WireFormat | None = None,
    ) -> None:
        parsed = _read_template(template)
        wire = _check_wire(wire)
        if wire.max_batch is not None:
            parsed = replace(parsed, max_batch=wire.max_batch)
        if parsed.encoding == "png_base64" and not wire.encoding.is_default:
            _encode_images(np.zeros((0, 1, 1, 1), np.uint8), parsed.encoding, wire.encoding)
        if url is not None:
            _check_url(url, "suspect URL")
        target = url if url is not None else parsed.url
        if target is None:
            raise ConfigError("the template has no field 'url'; add it or give the URL")
        super().__init__(policy, client, sleep, clock, seed, wire.encoding)
        self._template = parsed
        self._wire = wire
        self._labels = wire.label_index()
        self._url = target

    @property
    def address(self) -> str:
        return self._url

    def options(self) -> dict[str, Any]:
        return {
            "template": self._template.describe(),
            "encoding": self._wire.encoding.to_dict(),
            "labels": None if self._wire.labels is None else list(self._wire.labels),
        }

    def _answer(self, batch: npt.NDArray[np.uint8]) -> list[Answer]:
        answers: list[Answer] = []
        spans = _chunks(int(batch.shape[0]), self._template.max_batch)
        bodies = template_bodies(batch, self._template, self._wire.encoding)
        for (start, stop), content in zip(spans, bodies, strict=True):
            self._record(content)
            payload = self._transport.request(
                self._template.method,
                self._url,
                content=content,
                headers=dict(self._template.headers),
            )
            found = _follow(payload, self._template.answers)
            answers += normalize_answers(found, stop - start, self._labels)
        return answers
