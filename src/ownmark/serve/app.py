"""The prediction API: a FastAPI app speaking the Open Inference Protocol (KServe v2) over REST.

Routes (``{name}`` is :attr:`ServeConfig.model_name`, the only version is ``"1"``)::

    GET  /v2/health/live                        {"live": true}
    GET  /v2/health/ready                       {"ready": true}
    GET  /v2                                    server metadata
    GET  /v2/models/{name}[/versions/1]         model metadata
    GET  /v2/models/{name}[/versions/1]/ready   {"name": ..., "ready": true}
    POST /v2/models/{name}[/versions/1]/infer   inference

Only the ``/v2/models/...`` routes need the bearer token (when one is configured). Every
error is ``{"error": "<one line>"}``; client input never causes a 500.

The server holds under abuse and never answers from a broken model:

* a request body must arrive within :attr:`ServeConfig.body_timeout` (else 408 and the
  connection is closed), so clients that trickle their bodies cannot pile up; request heads
  get :attr:`ServeConfig.header_timeout` (see :mod:`ownmark.serve.background`);
* at most :attr:`ServeConfig.max_concurrency` inference requests run at once; beyond, 503 with
  ``Retry-After: 1`` (bodies still being read do not count, so slow clients cannot take the
  places of normal ones);
* a model that produces a NaN or infinite score answers 500 ``{"error": "the model produced
  non-finite scores ..."}``, never a label (an argmax over NaN is class 0 for every image);
* in the ``label`` and ``topk`` answer modes, a batch in which an image's top two
  probabilities are equal answers 500 too: its label would be an arbitrary tie-break (the
  lower class index), which a verifier could count as a real answer. The ``probabilities``
  mode answers the tie as it is; clients must treat a tied row as no answer (ownmark's
  verifier does).
"""

from __future__ import annotations

import hmac
import json
import logging
import math
import re
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from itertools import chain
from pathlib import Path
from typing import Any

import anyio
import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ownmark import __version__
from ownmark.errors import ConfigError
from ownmark.serve.backends import NonFiniteScoresError, PredictBackend

__all__ = ["ANSWER_MODES", "ServeConfig", "create_app"]

ANSWER_MODES = ("label", "topk", "probabilities")
"""What the server answers: top-1 labels, labels plus the k best classes with their scores, or
the full probability vector (without labels, like a typical probability API)."""

ACCESS_LOGGER = "ownmark.access"
"""Logger that receives the JSON access-log lines when no access-log file is configured."""

_SERVER_LOGGER = logging.getLogger("ownmark.serve")
_MODEL_VERSION = "1"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
_TOKEN_RE = re.compile(r"^[\x21-\x7e]+$")  # visible ASCII: it travels in an HTTP header
_LOG_KEY = "ownmark.access"  # scope key through which handlers report batch size and id
_REQUEST_KEYS = frozenset({"id", "inputs", "parameters", "outputs"})
_TENSOR_KEYS = frozenset({"name", "shape", "datatype", "data", "parameters"})
_OUTPUT_KEYS = frozenset({"name", "parameters"})
_MAX_LOGGED_ID = 256
_MAX_ERROR_CHARS = 400

_ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["error"],
    "properties": {"error": {"type": "string"}},
}


@dataclass(frozen=True)
class ServeConfig:
    """How the server answers.

    Attributes:
        model_name: the model's name in the URL (``/v2/models/{model_name}``); default
            ``"model"``. Letters, digits, ``_``, ``.`` and ``-``.
        answer: one of :data:`ANSWER_MODES`; default ``"label"``.
        top_k: classes returned by the ``"topk"`` answer (capped at the number of classes);
            default 5.
        max_batch: most images per request; more gives 413. Default 256.
        max_body_bytes: largest request body; more gives 413. Default 16 MiB.
        token: if set, the ``/v2/models/...`` routes need ``Authorization: Bearer <token>``;
            default ``None`` (open).
        access_log: path of a JSON-lines access-log file (appended to); default ``None``
            sends the lines to the ``ownmark.access`` logger instead.
        max_concurrency: most inference requests computed at once; more get 503 with
            ``Retry-After: 1``. Default 8: the forward passes share the CPU (the torch backend
            runs one at a time), so more in flight only lengthens every answer and holds more
            decoded batches in memory. A request counts from when its body has arrived.
        body_timeout: seconds a request body may take to arrive, from the end of its head
            (default 10.0); a slower one gets 408 and its connection is closed. 16 MiB takes
            well under a second on any real link; a client sending a byte at a time would
            otherwise hold its connection and buffers as long as it liked.
        header_timeout: seconds a connection may take to send a complete request head, from
            when it opens or its previous answer was sent (default 10.0); a slower one is
            closed. uvicorn has no such limit of its own: a client trickling headers would
            hold its connection forever.
        max_connections: most open connections (uvicorn's ``limit_concurrency``); a request
            arriving beyond gets 503 (default 256). It bounds the file descriptors and the
            memory abusive clients can take: each connection buffers at most
            ``max_body_bytes``, for at most ``body_timeout``.

    Raises:
        ConfigError: a value is out of range.
    """

    model_name: str = "model"
    answer: str = "label"
    top_k: int = 5
    max_batch: int = 256
    max_body_bytes: int = 16 * 2**20
    token: str | None = None
    access_log: str | None = None
    max_concurrency: int = 8
    body_timeout: float = 10.0
    header_timeout: float = 10.0
    max_connections: int = 256

    def __post_init__(self) -> None:
        if not isinstance(self.model_name, str) or not _NAME_RE.match(self.model_name):
            raise ConfigError(
                f"invalid model name {self.model_name!r}: use 1-100 letters, digits, '_', '.' "
                "or '-', starting with a letter or digit"
            )
        if self.answer not in ANSWER_MODES:
            raise ConfigError(
                f"unknown answer mode {self.answer!r}; choose one of: {', '.join(ANSWER_MODES)}"
            )
        for field, value in (
            ("top_k", self.top_k),
            ("max_batch", self.max_batch),
            ("max_body_bytes", self.max_body_bytes),
            ("max_concurrency", self.max_concurrency),
            ("max_connections", self.max_connections),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{field} must be a positive integer, got {value!r}")
        for field, seconds in (
            ("body_timeout", self.body_timeout),
            ("header_timeout", self.header_timeout),
        ):
            if (
                isinstance(seconds, bool)
                or not isinstance(seconds, int | float)
                or not math.isfinite(seconds)
                or seconds <= 0
            ):
                raise ConfigError(f"{field} must be a positive number of seconds, got {seconds!r}")
        if self.token is not None and (
            not isinstance(self.token, str) or not _TOKEN_RE.match(self.token)
        ):
            raise ConfigError(
                "the API token must be non-empty printable ASCII without spaces; "
                "generate one with: python -c 'import secrets; print(secrets.token_urlsafe())'"
            )
        if self.access_log is not None and (
            not isinstance(self.access_log, str) or not self.access_log
        ):
            raise ConfigError(f"access_log must be a file path or None, got {self.access_log!r}")


class _ApiError(Exception):
    """An error answered as ``{"error": message}`` with ``status`` (4xx, or 500 for a failing
    model)."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers


def _json_response(
    payload: object, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    # allow_nan=False: NaN is not JSON; a model that produces it is a server fault (500).
    body = json.dumps(payload, separators=(",", ":"), allow_nan=False)
    return Response(body, status_code=status, media_type="application/json", headers=headers)


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    text = " ".join(message.split())
    if len(text) > _MAX_ERROR_CHARS:  # e.g. a 4000-digit batch size echoed back
        text = text[: _MAX_ERROR_CHARS - 3] + "..."
    return _json_response({"error": text}, status, headers)


# --- access log -------------------------------------------------------------------------------


class _AccessLogSink:
    """Writes one JSON object per line to a file, or to the ``ownmark.access`` logger."""

    def __init__(self, path: str | None) -> None:
        self._path = Path(path) if path is not None else None
        self._lock = threading.Lock()
        self._logger = logging.getLogger(ACCESS_LOGGER)
        if self._path is not None:
            try:
                self._path.parent.mkdir(parents=True, exist_ok=True)
                with self._path.open("a", encoding="utf-8"):
                    pass
            except OSError as exc:
                raise ConfigError(
                    f"cannot write the access log {self._path}: {exc.strerror or exc}; "
                    "choose another path"
                ) from exc

    def write(self, record: dict[str, object]) -> None:
        line = json.dumps(record, separators=(",", ":"), ensure_ascii=True)
        if self._path is None:
            self._logger.info(line)
            return
        try:
            # Opened per line: survives log rotation and leaves no handle to close.
            with self._lock, self._path.open("a", encoding="utf-8") as handle:
                handle.write(line + "\n")
        except OSError as exc:  # a full disk must not break the API
            self._logger.warning("cannot write access log %s: %s", self._path, exc)


class _AccessLogMiddleware:
    """Pure ASGI middleware: counts bytes both ways and logs each HTTP request once.

    The line is written just before the last body chunk is sent, so it exists by the time
    the client has read the whole response.
    """

    def __init__(self, app: ASGIApp, sink: _AccessLogSink) -> None:
        self.app = app
        self.sink = sink

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        info: dict[str, Any] = {
            "status": None,
            "bytes_in": 0,
            "bytes_out": 0,
            "batch": None,
            "request_id": None,
            "logged": False,
        }
        scope[_LOG_KEY] = info

        async def counting_receive() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                info["bytes_in"] += len(message.get("body", b""))
            return message

        async def counting_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                info["status"] = message["status"]
            elif message["type"] == "http.response.body":
                info["bytes_out"] += len(message.get("body", b""))
                if not message.get("more_body", False):
                    self._emit(scope, info, start)
            await send(message)

        try:
            await self.app(scope, counting_receive, counting_send)
        finally:
            if not info["logged"]:  # the app raised before finishing its response
                if info["status"] is None:
                    info["status"] = 500
                self._emit(scope, info, start)

    def _emit(self, scope: Scope, info: dict[str, Any], start: float) -> None:
        if info["logged"]:
            return
        info["logged"] = True
        client = scope.get("client")
        request_id = info["request_id"]
        if isinstance(request_id, str) and len(request_id) > _MAX_LOGGED_ID:
            request_id = request_id[:_MAX_LOGGED_ID] + "..."
        ts = datetime.now(timezone.utc).isoformat(timespec="milliseconds")
        self.sink.write(
            {
                "ts": ts.replace("+00:00", "Z"),
                "client": client[0] if client else None,
                "method": scope.get("method"),
                "path": scope.get("path"),
                "status": info["status"],
                "batch": info["batch"],
                "duration_ms": round((time.perf_counter() - start) * 1000.0, 3),
                "bytes_in": info["bytes_in"],
                "bytes_out": info["bytes_out"],
                "request_id": request_id,
            }
        )


def _log_info(request: Request) -> dict[str, Any]:
    info = request.scope.get(_LOG_KEY)
    # Without the middleware (e.g. the app mounted elsewhere) a throwaway dict will do.
    return info if isinstance(info, dict) else {}


# --- request parsing --------------------------------------------------------------------------


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


# --- answers ----------------------------------------------------------------------------------


def _output_names(answer: str) -> tuple[str, ...]:
    return {
        "label": ("label",),
        "topk": ("label", "topk_labels", "topk_scores"),
        "probabilities": ("probabilities",),
    }[answer]


def _output_metadata(answer: str, k: int, num_classes: int) -> list[dict[str, Any]]:
    specs = {
        "label": ("INT64", [-1]),
        "topk_labels": ("INT64", [-1, k]),
        "topk_scores": ("FP32", [-1, k]),
        "probabilities": ("FP32", [-1, num_classes]),
    }
    return [
        {"name": name, "datatype": specs[name][0], "shape": specs[name][1]}
        for name in _output_names(answer)
    ]


def _rows_text(rows: list[int]) -> str:
    shown = ", ".join(map(str, rows[:10]))
    return shown + (f", ... ({len(rows)} in all)" if len(rows) > 10 else "")


def _non_finite(rows: list[int]) -> _ApiError:
    _SERVER_LOGGER.error("the model produced non-finite scores for image(s) %s", _rows_text(rows))
    return _ApiError(
        500,
        f"the model produced non-finite scores (NaN or infinity) for image(s) {_rows_text(rows)} "
        "of this request; a broken model gives no answer",
    )


def _check_scores(proba: np.ndarray, answer: str) -> None:
    """500 unless every row is finite and, for label and topk answers, has one top class.

    A row whose top two probabilities are equal has no label: ``argmax`` would answer the
    lower class index, the same arbitrary class for every such image (a uniform output, e.g.
    of a model pruned to nothing, is "class 0" everywhere). The probabilities answer carries
    the tie itself, so it goes out as it is and the client decides.
    """
    if proba.ndim != 2 or len(proba) == 0:
        return
    finite = np.isfinite(proba).all(axis=1)
    if not finite.all():
        raise _non_finite([int(i) for i in np.flatnonzero(~finite)])
    if answer == "probabilities" or proba.shape[1] < 2:
        return
    top2 = np.partition(proba, -2, axis=1)[:, -2:]
    tied = top2[:, 0] == top2[:, 1]
    if tied.any():
        rows = [int(i) for i in np.flatnonzero(tied)]
        _SERVER_LOGGER.warning("the model's top scores tie for image(s) %s", _rows_text(rows))
        raise _ApiError(
            500,
            f"the model's top scores tie for image(s) {_rows_text(rows)} of this request, so "
            "it names no class for them; rather than an arbitrary tie-break no label is "
            "answered (the probabilities answer mode shows the scores)",
        )


def _outputs(proba: np.ndarray, names: tuple[str, ...], k: int) -> list[dict[str, Any]]:
    n, num_classes = proba.shape
    result: list[dict[str, Any]] = []
    order: np.ndarray | None = None
    if "topk_labels" in names or "topk_scores" in names:
        # Stable sort: among equal scores the lower class comes first, as in argmax.
        order = np.argsort(-proba, axis=1, kind="stable")[:, :k]
    for name in names:
        if name == "label":
            result.append(
                {
                    "name": "label",
                    "datatype": "INT64",
                    "shape": [n],
                    "data": proba.argmax(axis=1).tolist(),
                }
            )
        elif name == "topk_labels" and order is not None:
            data = order.reshape(-1).tolist()
            result.append({"name": name, "datatype": "INT64", "shape": [n, k], "data": data})
        elif name == "topk_scores" and order is not None:
            scores = np.take_along_axis(proba, order, axis=1).reshape(-1).tolist()
            result.append({"name": name, "datatype": "FP32", "shape": [n, k], "data": scores})
        elif name == "probabilities":
            data = proba.reshape(-1).tolist()
            result.append(
                {"name": name, "datatype": "FP32", "shape": [n, num_classes], "data": data}
            )
    return result


def _infer_openapi(
    image_shape: tuple[int, int, int], max_batch: int, outputs: tuple[str, ...]
) -> dict[str, Any]:
    """JSON schema of the infer request, so API tools know its shape."""
    c, h, w = image_shape
    tensor = {
        "type": "object",
        "required": ["name", "shape", "datatype", "data"],
        "additionalProperties": False,
        "properties": {
            "name": {"type": "string", "enum": ["images"]},
            "shape": {
                "type": "array",
                "minItems": 4,
                "maxItems": 4,
                "prefixItems": [
                    {"type": "integer", "minimum": 1, "maximum": max_batch},
                    {"type": "integer", "enum": [c]},
                    {"type": "integer", "enum": [h]},
                    {"type": "integer", "enum": [w]},
                ],
            },
            "datatype": {"type": "string", "enum": ["UINT8"]},
            "data": {
                "type": "array",
                "description": "N*C*H*W pixels 0..255, flat row-major or nested like 'shape'",
                "items": {
                    "anyOf": [{"type": "integer", "minimum": 0, "maximum": 255}, {"type": "array"}]
                },
            },
            "parameters": {"type": "object"},
        },
    }
    request = {
        "type": "object",
        "required": ["inputs"],
        "additionalProperties": False,
        "properties": {
            "id": {"type": "string"},
            "parameters": {"type": "object"},
            "inputs": {"type": "array", "minItems": 1, "maxItems": 1, "items": tensor},
            "outputs": {
                "type": "array",
                "minItems": 1,
                "items": {
                    "type": "object",
                    "required": ["name"],
                    "additionalProperties": False,
                    "properties": {
                        "name": {"type": "string", "enum": list(outputs)},
                        "parameters": {"type": "object"},
                    },
                },
            },
        },
    }
    output_tensor = {
        "type": "object",
        "required": ["name", "datatype", "shape", "data"],
        "properties": {
            "name": {"type": "string", "enum": list(outputs)},
            "datatype": {"type": "string", "enum": ["INT64", "FP32"]},
            "shape": {"type": "array", "items": {"type": "integer"}},
            "data": {"type": "array", "items": {"type": "number"}},
        },
    }
    response = {
        "type": "object",
        "required": ["model_name", "model_version", "outputs"],
        "properties": {
            "model_name": {"type": "string"},
            "model_version": {"type": "string"},
            "id": {"type": "string"},
            "outputs": {"type": "array", "items": output_tensor},
        },
    }
    return {
        "requestBody": {"required": True, "content": {"application/json": {"schema": request}}},
        "responses": {
            "200": {
                "description": "Inference response",
                "content": {"application/json": {"schema": response}},
            },
        },
    }


_ERROR_TEXTS = {
    400: "Malformed request",
    401: "Missing or wrong bearer token",
    404: "Unknown model or version",
    408: "The request body did not arrive in time (the connection is closed)",
    413: "Request body or batch too large",
    422: "Invalid path parameter",
    500: "The model failed, or produced non-finite or (label, topk) tied top scores",
    503: "Too many inference requests in flight; see Retry-After",
}


def _error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for error statuses, all with the ``{"error": ...}`` body."""
    return {
        status: {
            "description": _ERROR_TEXTS[status],
            "content": {"application/json": {"schema": _ERROR_SCHEMA}},
        }
        for status in statuses
    }


# --- the app ----------------------------------------------------------------------------------


def create_app(backend: PredictBackend, config: ServeConfig) -> FastAPI:
    """A FastAPI app serving ``backend`` over the Open Inference Protocol (KServe v2, REST).

    Inference requests carry one UINT8 input named ``images`` of shape ``[N, C, H, W]`` whose
    ``data`` is the flat row-major pixel list (or lists nested like the shape). What comes back
    depends on ``config.answer``: ``label`` (INT64 ``[N]``), ``topk`` (``label`` plus
    ``topk_labels`` INT64 ``[N, k]`` and ``topk_scores`` FP32 ``[N, k]``, best first), or
    ``probabilities`` (FP32 ``[N, K]`` only). A request's ``outputs`` list picks a subset.

    Errors are ``{"error": "..."}``: 400 malformed request, 401 missing/wrong bearer token,
    404 unknown route/model/version, 405 wrong method, 408 body not received within
    ``body_timeout``, 413 body over ``max_body_bytes`` (by Content-Length or by the bytes
    actually received) or batch over ``max_batch``, 500 the model failed or produced
    non-finite scores (or, in the label and topk modes, top scores that tie), 503 more than
    ``max_concurrency`` inference requests in flight (with ``Retry-After``).

    Raises:
        ConfigError: the access-log file cannot be written.
    """
    sink = _AccessLogSink(config.access_log)
    image_shape = backend.input_shape
    num_classes = backend.num_classes
    k = min(config.top_k, num_classes)
    allowed = _output_names(config.answer)
    token = config.token.encode("ascii") if config.token is not None else None

    app = FastAPI(
        title="ownmark prediction API",
        version=__version__,
        description=(
            "Open Inference Protocol (KServe v2) REST API serving one image classifier. "
            'Errors are JSON objects {"error": "..."}.'
        ),
    )
    app.add_middleware(_AccessLogMiddleware, sink=sink)
    # BackgroundServer and serve_forever read the connection limits from here.
    app.state.ownmark_config = config

    def authorize(request: Request) -> None:
        if token is None:
            return
        scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
        # Header values arrive latin-1 decoded, so encoding back is lossless.
        given = credentials.strip().encode("latin-1")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given, token):
            raise _ApiError(
                401,
                "missing or wrong API token; send the header 'Authorization: Bearer <token>'",
                {"WWW-Authenticate": 'Bearer realm="ownmark"'},
            )

    def check_model(name: str, version: str | None = None) -> None:
        if name != config.model_name:
            raise _ApiError(
                404, f"unknown model {name[:100]!r}; this server serves {config.model_name!r}"
            )
        if version is not None and version != _MODEL_VERSION:
            raise _ApiError(
                404, f"model {name!r} has no version {version[:50]!r}; the only one is '1'"
            )

    async def read_body(request: Request) -> bytes:
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

    def run_inference(body: bytes, info: dict[str, Any]) -> Response:
        parsed = _parse_request(body, image_shape, config.max_batch, allowed, info)
        try:
            proba = np.asarray(backend.predict_proba(parsed.images))
        except NonFiniteScoresError as exc:
            raise _non_finite(exc.rows) from exc
        except Exception as exc:
            # Answered here rather than left to Starlette, which would also drop the connection.
            _SERVER_LOGGER.exception("the model failed on a request")
            raise _ApiError(500, "the model failed on this request; see the server log") from exc
        _check_scores(proba, config.answer)
        payload: dict[str, Any] = {"model_name": config.model_name, "model_version": "1"}
        if parsed.request_id is not None:
            payload["id"] = parsed.request_id
        payload["outputs"] = _outputs(proba, parsed.outputs, k)
        return _json_response(payload)

    infer_openapi = _infer_openapi(image_shape, config.max_batch, allowed)

    # Inference requests being computed. Only the event loop's thread touches it (between
    # awaits), so it needs no lock.
    in_flight = 0

    async def infer(request: Request, name: str, version: str | None) -> Response:
        nonlocal in_flight
        authorize(request)
        check_model(name, version)
        body = await read_body(request)
        if in_flight >= config.max_concurrency:
            raise _ApiError(
                503,
                f"the server is busy ({config.max_concurrency} inference requests in flight); "
                "retry in a second",
                {"Retry-After": "1"},
            )
        in_flight += 1
        try:
            # Parsing 200k ints and the forward pass are CPU work: keep them off the event loop.
            return await run_in_threadpool(run_inference, body, _log_info(request))
        finally:
            in_flight -= 1

    # Declaring 422 stops FastAPI from documenting its own validation-error body for it.
    infer_errors = _error_responses(400, 401, 404, 408, 413, 422, 500, 503)
    model_errors = _error_responses(401, 404, 422)

    @app.post(
        "/v2/models/{model_name}/infer",
        openapi_extra=infer_openapi,
        responses=infer_errors,
        tags=["inference"],
    )
    async def model_infer(request: Request, model_name: str) -> Response:
        """Classify a batch of uint8 images."""
        return await infer(request, model_name, None)

    @app.post(
        "/v2/models/{model_name}/versions/{model_version}/infer",
        openapi_extra=infer_openapi,
        responses=infer_errors,
        tags=["inference"],
    )
    async def model_version_infer(
        request: Request, model_name: str, model_version: str
    ) -> Response:
        """Classify a batch of uint8 images (explicit model version)."""
        return await infer(request, model_name, model_version)

    @app.get("/v2/health/live", tags=["health"])
    def server_live() -> Response:
        """Liveness: the server process answers."""
        return _json_response({"live": True})

    @app.get("/v2/health/ready", tags=["health"])
    def server_ready() -> Response:
        """Readiness: the model is loaded (it is loaded before the server starts)."""
        return _json_response({"ready": True})

    @app.get("/v2", tags=["metadata"])
    def server_metadata() -> Response:
        """Server name, version and supported protocol extensions (none)."""
        return _json_response({"name": "ownmark", "version": __version__, "extensions": []})

    model_metadata = {
        "name": config.model_name,
        "versions": [_MODEL_VERSION],
        "platform": backend.platform,
        "inputs": [{"name": "images", "datatype": "UINT8", "shape": [-1, *image_shape]}],
        "outputs": _output_metadata(config.answer, k, num_classes),
        "parameters": {
            "answer": config.answer,
            "num_classes": num_classes,
            "top_k": k,
            "max_batch": config.max_batch,
        },
    }

    def metadata(request: Request, name: str, version: str | None) -> Response:
        authorize(request)
        check_model(name, version)
        return _json_response(model_metadata)

    def ready(request: Request, name: str, version: str | None) -> Response:
        authorize(request)
        check_model(name, version)
        return _json_response({"name": name, "ready": True})

    @app.get("/v2/models/{model_name}", tags=["metadata"], responses=model_errors)
    def get_model_metadata(request: Request, model_name: str) -> Response:
        """Model metadata: input and output tensors, answer mode."""
        return metadata(request, model_name, None)

    @app.get(
        "/v2/models/{model_name}/versions/{model_version}",
        tags=["metadata"],
        responses=model_errors,
    )
    def get_model_version_metadata(
        request: Request, model_name: str, model_version: str
    ) -> Response:
        """Model metadata (explicit model version)."""
        return metadata(request, model_name, model_version)

    @app.get("/v2/models/{model_name}/ready", tags=["health"], responses=model_errors)
    def model_ready(request: Request, model_name: str) -> Response:
        """Model readiness."""
        return ready(request, model_name, None)

    @app.get(
        "/v2/models/{model_name}/versions/{model_version}/ready",
        tags=["health"],
        responses=model_errors,
    )
    def model_version_ready(request: Request, model_name: str, model_version: str) -> Response:
        """Model readiness (explicit model version)."""
        return ready(request, model_name, model_version)

    _install_error_handlers(app)
    return app


def _install_error_handlers(app: FastAPI) -> None:
    """Make every error body ``{"error": "..."}``, FastAPI's own 404/405/422 included."""

    async def request_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, _ApiError)
        return _error(exc.status, exc.message, exc.headers)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        where = f"{request.method} {request.url.path[:200]}"
        if exc.status_code == 404:
            message = f"not found: {where}; see /openapi.json for the routes"
        elif exc.status_code == 405:
            allow = (exc.headers or {}).get("allow", (exc.headers or {}).get("Allow", ""))
            message = f"method not allowed: {where}" + (f"; allowed: {allow}" if allow else "")
        else:
            message = str(exc.detail)
        return _error(exc.status_code, message, dict(exc.headers or {}))

    async def validation_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        errors = exc.errors()
        first = errors[0] if errors else {}
        loc = ".".join(str(part) for part in first.get("loc", ()))
        return _error(422, f"invalid request: {loc}: {first.get('msg', 'invalid value')}")

    async def internal_error(request: Request, exc: Exception) -> Response:
        return _error(500, "internal server error; see the server log")

    app.add_exception_handler(_ApiError, request_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(Exception, internal_error)
