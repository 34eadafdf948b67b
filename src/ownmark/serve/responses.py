"""JSON answers and errors: every error the API gives is ``{"error": "<one line>"}``.

:class:`_ApiError` is what handlers raise for a 4xx (or a 500 for a failing model);
:func:`_install_error_handlers` turns it, and FastAPI's own 404/405/422 and any other
exception, into that body. Kept apart so the request decoder and the answer encoder can raise
API errors without importing the app.
"""

from __future__ import annotations

import json

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

_MAX_ERROR_CHARS = 400


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
