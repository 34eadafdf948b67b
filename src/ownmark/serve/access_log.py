"""The access log: one JSON line per HTTP request, to a file or the ``ownmark.access`` logger.

:class:`_AccessLogMiddleware` is pure ASGI: it counts the bytes both ways and writes the line
just before the last body chunk goes out. Handlers report the batch size and request id
through the request scope (:func:`_log_info`).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from fastapi import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ownmark.errors import ConfigError

ACCESS_LOGGER = "ownmark.access"
"""Logger that receives the JSON access-log lines when no access-log file is configured."""

_LOG_KEY = "ownmark.access"  # scope key through which handlers report batch size and id
_MAX_LOGGED_ID = 256


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
