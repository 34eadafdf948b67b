"""Run the prediction API with uvicorn: in a background thread (tests, demos) or in the foreground.

Both bind the listening socket themselves before uvicorn starts, so port 0 (any free port)
works and the URL printed or exposed is the one really served.

Both also run uvicorn with the connection limits of the app's :class:`ServeConfig`: at most
``max_connections`` open connections (uvicorn's ``limit_concurrency``: 503 beyond), idle
keep-alive connections closed after 5 s (uvicorn's default), and a request head that must
arrive within ``header_timeout`` (:class:`_GuardedH11Protocol`; uvicorn itself waits forever
for a client that sends its headers a byte at a time). Request bodies are timed by the app
(``body_timeout``).
"""

from __future__ import annotations

import asyncio
import socket
import sys
import threading
import time
from types import TracebackType
from typing import Any, TextIO

import uvicorn
from fastapi import FastAPI
from uvicorn.protocols.http.h11_impl import H11Protocol

from ownmark.errors import ConfigError
from ownmark.serve.app import ServeConfig, create_app
from ownmark.serve.backends import PredictBackend

__all__ = ["BackgroundServer", "serve_forever"]

_START_TIMEOUT_S = 30.0
_STOP_TIMEOUT_S = 10.0


def _bind(host: str, port: int) -> socket.socket:
    """A bound (not yet listening) TCP socket; ConfigError if the address is unusable."""
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ConfigError(f"port must be an integer 0..65535 (0: any free port), got {port!r}")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        family, _, _, _, address = infos[0]
        sock = socket.socket(family, socket.SOCK_STREAM)
    except OSError as exc:
        raise ConfigError(f"cannot listen on {host}:{port}: {exc}; check the host") from exc
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # Accepted connections inherit this. Without it, small responses written in two parts
        # (headers, body) meet the client's delayed ACK: ~40 ms per request instead of ~1 ms.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise ConfigError(
            f"cannot listen on {host}:{port}: {exc.strerror or exc}; choose another port "
            "(0 picks a free one)"
        ) from exc
    return sock


def _url(host: str, port: int) -> str:
    shown = f"[{host}]" if ":" in host else host  # IPv6 literals need brackets in URLs
    return f"http://{shown}:{port}"


class _GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol, with a deadline for each request head.

    Armed when the connection opens and again when an answer has been sent; when it fires and
    no request is being answered (the head has not arrived, or an answered request's body is
    still being drained), the connection is closed. Unlike uvicorn's keep-alive timer, it is
    not reset by incoming bytes, so a client that trickles its headers is cut too.
    """

    header_timeout = 10.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_timer()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_head_timer()
        super().connection_lost(exc)

    def _arm_head_timer(self) -> None:
        self._disarm_head_timer()
        self._head_timer = self.loop.call_later(self.header_timeout, self._head_timed_out)

    def _disarm_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_complete:
            return  # a request is being answered; the app times its body
        self.transport.close()  # connection_lost does the h11 bookkeeping


def _uvicorn_config(app: FastAPI) -> uvicorn.Config:
    config = getattr(app.state, "ownmark_config", None)
    if not isinstance(config, ServeConfig):
        config = ServeConfig()
    protocol = type(
        "_GuardedH11Protocol", (_GuardedH11Protocol,), {"header_timeout": config.header_timeout}
    )
    # Quiet: uvicorn's own access log is off, the app logs each request as JSON itself.
    return uvicorn.Config(
        app,
        log_level="warning",
        access_log=False,
        lifespan="off",
        http=protocol,
        limit_concurrency=config.max_connections,
    )


class BackgroundServer:
    """Serve ``app`` with uvicorn in a daemon thread, as a context manager.

    Example::

        with BackgroundServer(create_app(backend, ServeConfig())) as server:
            httpx.get(server.url + "/v2/health/ready")

    Args:
        app: the ASGI app (see :func:`~ownmark.serve.create_app`).
        host: address to listen on; default ``"127.0.0.1"`` (this machine only).
        port: TCP port; default ``0`` picks a free one (read it back from :attr:`port`).

    Raises:
        ConfigError: on ``__enter__``, the address cannot be bound.
        RuntimeError: on ``__enter__``, uvicorn did not start within 30 s.
    """

    def __init__(self, app: FastAPI, host: str = "127.0.0.1", port: int = 0) -> None:
        self.app = app
        self.host = host
        self._requested_port = port
        self._port: int | None = None
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._socket: socket.socket | None = None

    @property
    def port(self) -> int:
        """The port actually served (only while the server runs)."""
        if self._port is None:
            raise RuntimeError("the server is not running; use it as a context manager")
        return self._port

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:54321`` (only while the server runs)."""
        return _url(self.host, self.port)

    def __enter__(self) -> BackgroundServer:
        if self._thread is not None:
            raise RuntimeError("BackgroundServer is already running")
        sock = _bind(self.host, self._requested_port)
        server = uvicorn.Server(_uvicorn_config(self.app))
        thread = threading.Thread(
            target=server.run, kwargs={"sockets": [sock]}, name="ownmark-server", daemon=True
        )
        self._socket, self._server, self._thread = sock, server, thread
        self._port = int(sock.getsockname()[1])
        thread.start()
        deadline = time.monotonic() + _START_TIMEOUT_S
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                self._stop()
                raise RuntimeError(f"the server on {_url(self.host, self._port)} did not start")
            time.sleep(0.01)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._stop()

    def _stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(_STOP_TIMEOUT_S)
            if self._thread.is_alive() and self._server is not None:
                self._server.force_exit = True  # e.g. a client holds a keep-alive connection
                self._thread.join(_STOP_TIMEOUT_S)
        if self._socket is not None:
            self._socket.close()
        self._server = self._thread = self._socket = None
        self._port = None


def serve_forever(
    backend: PredictBackend,
    config: ServeConfig,
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    stream: TextIO | None = None,
) -> None:
    """Serve ``backend`` in the foreground until interrupted (Ctrl+C / SIGTERM).

    Prints one line with the URL of the infer route to ``stream`` (default stdout) once the
    address is bound.

    Args:
        backend: the model to serve.
        config: how to answer (see :class:`ServeConfig`).
        host: address to listen on; default ``"127.0.0.1"``. Use ``"0.0.0.0"`` to accept
            connections from other machines.
        port: TCP port; default 8000, ``0`` picks a free one.
        stream: where the URL line goes; default ``sys.stdout``.

    Raises:
        ConfigError: the address cannot be bound, or the access log cannot be written.
    """
    app = create_app(backend, config)
    sock = _bind(host, port)
    try:
        bound = int(sock.getsockname()[1])
        out = stream if stream is not None else sys.stdout
        infer = f"{_url(host, bound)}/v2/models/{config.model_name}/infer"
        print(f"ownmark: serving {config.model_name!r} at {infer} (Ctrl+C to stop)", file=out)
        out.flush()
        uvicorn.Server(_uvicorn_config(app)).run(sockets=[sock])
    finally:
        sock.close()
