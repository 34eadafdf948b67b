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

The pieces live beside this module: :mod:`~ownmark.serve.config` (:class:`ServeConfig`),
:mod:`~ownmark.serve.decode` (request bodies, their limits and checks),
:mod:`~ownmark.serve.encode` (scores to outputs, and the refusals),
:mod:`~ownmark.serve.responses` (JSON answers and ``{"error": ...}``),
:mod:`~ownmark.serve.access_log` and :mod:`~ownmark.serve.openapi`. This module holds the app
factory and its routes; the server runner and its request-head timeout are in
:mod:`~ownmark.serve.background`.
"""

from __future__ import annotations

import hmac
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from ownmark import __version__
from ownmark.serve.access_log import ACCESS_LOGGER as ACCESS_LOGGER
from ownmark.serve.access_log import _AccessLogMiddleware, _AccessLogSink, _log_info
from ownmark.serve.backends import NonFiniteScoresError, PredictBackend
from ownmark.serve.config import ANSWER_MODES, ServeConfig
from ownmark.serve.decode import _parse_request, _read_body
from ownmark.serve.encode import (
    _SERVER_LOGGER,
    _check_scores,
    _non_finite,
    _output_metadata,
    _output_names,
    _outputs,
)
from ownmark.serve.openapi import _error_responses, _infer_openapi
from ownmark.serve.responses import _ApiError, _install_error_handlers, _json_response

__all__ = ["ANSWER_MODES", "ServeConfig", "create_app"]

_MODEL_VERSION = "1"


class _ModelService:
    """What the routes do, apart from FastAPI: authorisation, model checks, inference with a
    bound on the requests in flight, metadata."""

    def __init__(self, backend: PredictBackend, config: ServeConfig) -> None:
        self.backend, self.config = backend, config
        self.image_shape = backend.input_shape
        self.k = min(config.top_k, backend.num_classes)
        self.allowed = _output_names(config.answer)
        self.token = config.token.encode("ascii") if config.token is not None else None
        # Inference requests being computed. Only the event loop's thread touches it (between
        # awaits), so it needs no lock.
        self.in_flight = 0
        self.model_metadata = {
            "name": config.model_name,
            "versions": [_MODEL_VERSION],
            "platform": backend.platform,
            "inputs": [{"name": "images", "datatype": "UINT8", "shape": [-1, *self.image_shape]}],
            "outputs": _output_metadata(config.answer, self.k, backend.num_classes),
            "parameters": {
                "answer": config.answer,
                "num_classes": backend.num_classes,
                "top_k": self.k,
                "max_batch": config.max_batch,
            },
        }

    def authorize(self, request: Request) -> None:
        if self.token is None:
            return
        scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
        # Header values arrive latin-1 decoded, so encoding back is lossless.
        given = credentials.strip().encode("latin-1")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given, self.token):
            raise _ApiError(
                401,
                "missing or wrong API token; send the header 'Authorization: Bearer <token>'",
                {"WWW-Authenticate": 'Bearer realm="ownmark"'},
            )

    def check_model(self, name: str, version: str | None = None) -> None:
        served = self.config.model_name
        if name != served:
            raise _ApiError(404, f"unknown model {name[:100]!r}; this server serves {served!r}")
        if version is not None and version != _MODEL_VERSION:
            raise _ApiError(
                404, f"model {name!r} has no version {version[:50]!r}; the only one is '1'"
            )

    def run_inference(self, body: bytes, info: dict[str, Any]) -> Response:
        config = self.config
        parsed = _parse_request(body, self.image_shape, config.max_batch, self.allowed, info)
        try:
            proba = np.asarray(self.backend.predict_proba(parsed.images))
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
        payload["outputs"] = _outputs(proba, parsed.outputs, self.k)
        return _json_response(payload)

    async def infer(self, request: Request, name: str, version: str | None) -> Response:
        self.authorize(request)
        self.check_model(name, version)
        body = await _read_body(request, self.config)
        limit = self.config.max_concurrency
        if self.in_flight >= limit:
            raise _ApiError(
                503,
                f"the server is busy ({limit} inference requests in flight); retry in a second",
                {"Retry-After": "1"},
            )
        self.in_flight += 1
        try:
            # Parsing 200k ints and the forward pass are CPU work: keep them off the event loop.
            return await run_in_threadpool(self.run_inference, body, _log_info(request))
        finally:
            self.in_flight -= 1

    def metadata(self, request: Request, name: str, version: str | None) -> Response:
        self.authorize(request)
        self.check_model(name, version)
        return _json_response(self.model_metadata)

    def ready(self, request: Request, name: str, version: str | None) -> Response:
        self.authorize(request)
        self.check_model(name, version)
        return _json_response({"name": name, "ready": True})


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
    service = _ModelService(backend, config)
    app = FastAPI(
        title="ownmark prediction API",
        version=__version__,
        description=(
            "Open Inference Protocol (KServe v2) REST API serving one image classifier. "
            'Errors are JSON objects {"error": "..."}.'
        ),
    )
    app.add_middleware(_AccessLogMiddleware, sink=_AccessLogSink(config.access_log))
    # BackgroundServer and serve_forever read the connection limits from here.
    app.state.ownmark_config = config
    infer_openapi = _infer_openapi(backend.input_shape, config.max_batch, service.allowed)
    infer = service.infer
    metadata, ready = service.metadata, service.ready

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
