"""Request decoding and its limits: an infer request's body in, a checked uint8 batch out.

:func:`_read_body` reads the body within the size and time limits of :class:`ServeConfig`;
:func:`_parse_request` checks the JSON against the Open Inference Protocol and this model's
input (one UINT8 tensor ``images`` of shape ``[N, C, H, W]``, pixels 0..255). Any fault in
client input is a 4xx :class:`_ApiError` here, never a 500.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from itertools import chain
from typing import Any

import anyio
import numpy as np
from fastapi import Request
from starlette.requests import ClientDisconnect

from ownmark.serve.config import ServeConfig
from ownmark.serve.responses import _ApiError

_REQUEST_KEYS = frozenset({"id", "inputs", "parameters", "outputs"})
_TENSOR_KEYS = frozenset({"name", "shape", "datatype", "data", "parameters"})
_OUTPUT_KEYS = frozenset({"name", "parameters"})


_JSON_TYPE_NAMES: dict[type, str] = {
    bool: "boolean",
    int: "integer",
    float: "number",
    str: "string",
    list: "array",
    dict: "object",
    type(None): "null",
}


def _type_name(value: object) -> str:
    """The JSON name of a parsed value's type, for error messages."""
    return _JSON_TYPE_NAMES.get(type(value), type(value).__name__)


def _check_keys(obj: dict[str, Any], allowed: frozenset[str], where: str) -> None:
    unknown = sorted(set(obj) - allowed)
    if unknown:
        shown = ", ".join(repr(k[:50]) for k in unknown[:3])
        raise _ApiError(
            400, f"unknown field(s) {shown} in {where}; allowed: {', '.join(sorted(allowed))}"
        )


def _flatten(data: list[Any], shape: list[int]) -> list[Any]:
    """Row-major flat list from ``data``, which is flat or nested exactly like ``shape``."""
    if not data or not isinstance(data[0], list):
        return data
    level: list[Any] = [data]
    for depth, size in enumerate(shape):
        if not all(type(item) is list and len(item) == size for item in level):
            raise _ApiError(
                400,
                f"nested 'data' does not match shape {shape} at depth {depth}; send a flat "
                "row-major list or lists nested exactly like the shape",
            )
        level = list(chain.from_iterable(level))
    return level


def _parse_images(
    tensor: object, image_shape: tuple[int, int, int], max_batch: int, info: dict[str, Any]
) -> np.ndarray:
    """Validate one v2 input tensor and return it as a uint8 ``(N, C, H, W)`` array."""
    if not isinstance(tensor, dict):
        raise _ApiError(400, f"each input must be an object, got {_type_name(tensor)}")
    _check_keys(tensor, _TENSOR_KEYS, "the input")
    for key in ("name", "shape", "datatype", "data"):
        if key not in tensor:
            raise _ApiError(400, f"the input lacks the field {key!r}")
    name = tensor["name"]
    if name != "images":
        shown = repr(name[:50]) if isinstance(name, str) else _type_name(name)
        raise _ApiError(400, f"unknown input {shown}; this model has one input, 'images'")
    datatype = tensor["datatype"]
    if datatype != "UINT8":
        shown = repr(datatype[:20]) if isinstance(datatype, str) else _type_name(datatype)
        raise _ApiError(
            400, f"input 'images' must have datatype 'UINT8' (pixels 0..255), got {shown}"
        )
    if "parameters" in tensor and not isinstance(tensor["parameters"], dict):
        raise _ApiError(400, "input 'parameters' must be an object")
    shape = tensor["shape"]
    expected = "[N, " + ", ".join(map(str, image_shape)) + "]"
    if not isinstance(shape, list) or len(shape) != 4 or not all(type(v) is int for v in shape):
        raise _ApiError(400, f"input 'shape' must be four integers {expected}")
    if tuple(shape[1:]) != image_shape:
        shown = "[" + ", ".join(str(v)[:20] for v in shape) + "]"
        raise _ApiError(400, f"input shape {shown} does not fit this model: expected {expected}")
    batch = shape[0]
    if batch < 1:
        raise _ApiError(400, f"the batch size N must be at least 1, got {batch}")
    info["batch"] = batch
    if batch > max_batch:
        raise _ApiError(
            413, f"batch of {batch} images is over this server's limit of {max_batch}; split it"
        )
    data = tensor["data"]
    if not isinstance(data, list):
        raise _ApiError(400, f"input 'data' must be an array, got {_type_name(data)}")
    flat = _flatten(data, shape)
    count = math.prod(shape)
    if len(flat) != count:
        raise _ApiError(
            400, f"input 'data' has {len(flat)} values, but shape {shape} needs {count}"
        )
    # type() rather than isinstance(): JSON true/false are bools, a subclass of int.
    wrong = set(map(type, flat)) - {int}
    if wrong:
        shown = ", ".join(sorted(_JSON_TYPE_NAMES.get(t, t.__name__) for t in wrong))
        raise _ApiError(400, f"input 'data' must hold integers 0..255, found {shown}")
    try:
        values = np.array(flat, dtype=np.int64)
    except OverflowError:
        raise _ApiError(400, "input 'data' holds values outside 0..255") from None
    low, high = int(values.min()), int(values.max())
    if low < 0 or high > 255:
        bad = low if low < 0 else high
        raise _ApiError(400, f"input 'data' holds the value {bad}, outside 0..255")
    return values.astype(np.uint8).reshape(shape)


@dataclass(frozen=True)
class _Inference:
    images: np.ndarray
    request_id: str | None
    outputs: tuple[str, ...]


def _parse_request(
    body: bytes,
    image_shape: tuple[int, int, int],
    max_batch: int,
    allowed_outputs: tuple[str, ...],
    info: dict[str, Any],
) -> _Inference:
    try:
        payload = json.loads(body)
    except RecursionError:
        raise _ApiError(400, "the request body is nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, huge integer literals
        raise _ApiError(400, f"the request body is not valid JSON ({exc})") from None
    if not isinstance(payload, dict):
        raise _ApiError(400, f"the request body must be a JSON object, got {_type_name(payload)}")
    _check_keys(payload, _REQUEST_KEYS, "the request")
    request_id = payload.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise _ApiError(400, f"'id' must be a string, got {_type_name(request_id)}")
    info["request_id"] = request_id
    if "parameters" in payload and not isinstance(payload["parameters"], dict):
        raise _ApiError(400, "'parameters' must be an object")
    outputs = _parse_outputs(payload.get("outputs"), allowed_outputs)
    inputs = payload.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1:
        got = f"{len(inputs)} inputs" if isinstance(inputs, list) else _type_name(inputs)
        raise _ApiError(
            400, f"'inputs' must be an array with exactly one tensor ('images'), got {got}"
        )
    images = _parse_images(inputs[0], image_shape, max_batch, info)
    return _Inference(images, request_id, outputs)


def _parse_outputs(requested: object, allowed: tuple[str, ...]) -> tuple[str, ...]:
    if requested is None:
        return allowed
    if not isinstance(requested, list) or not requested:
        raise _ApiError(400, "'outputs' must be a non-empty array of {\"name\": ...} objects")
    names: list[str] = []
    for item in requested:
        if not isinstance(item, dict):
            raise _ApiError(400, f"each output must be an object, got {_type_name(item)}")
        _check_keys(item, _OUTPUT_KEYS, "an output")
        if "parameters" in item and not isinstance(item["parameters"], dict):
            raise _ApiError(400, "output 'parameters' must be an object")
        name = item.get("name")
        if not isinstance(name, str) or name not in allowed:
            shown = repr(name[:50]) if isinstance(name, str) else _type_name(name)
            raise _ApiError(
                400, f"unknown output {shown}; this server answers with: {', '.join(allowed)}"
            )
        if name in names:
            raise _ApiError(400, f"output {name!r} is requested twice")
        names.append(name)
    return tuple(names)


async def _read_body(request: Request, config: ServeConfig) -> bytes:
    """The request body, at most ``config.max_body_bytes`` (else 413), within
    ``config.body_timeout`` (else 408, and the connection is closed)."""
    limit = config.max_body_bytes
    too_large = f"request body over this server's limit of {limit} bytes; send fewer images"
    declared = request.headers.get("content-length")
    if declared is not None:
        if not (declared.isascii() and declared.strip().isdigit()):
            raise _ApiError(400, "invalid Content-Length header")
        if int(declared) > limit:
            raise _ApiError(413, too_large)
    # Count what actually arrives too: chunked bodies carry no Content-Length.
    chunks: list[bytes] = []
    total = 0
    try:
        with anyio.fail_after(config.body_timeout):
            async for chunk in request.stream():
                total += len(chunk)
                if total > limit:
                    raise _ApiError(413, too_large)
                chunks.append(chunk)
    except ClientDisconnect:
        raise _ApiError(400, "the client disconnected while sending the body") from None
    except TimeoutError:
        # Closed afterwards: the rest of a trickled body is not worth waiting for.
        raise _ApiError(
            408,
            f"the request body did not arrive within {config.body_timeout:g} s "
            f"({total} bytes came); send the whole body at once",
            {"Connection": "close"},
        ) from None
    return b"".join(chunks)
