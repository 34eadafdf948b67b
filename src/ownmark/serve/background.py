"""Run the prediction API with uvicorn: in a background thread (tests, demos) or in the foreground.

Both bind the listening socket themselves before uvicorn starts, so port 0 (any free port)
works and the URL printed or exposed is the one really served.
"""

from __future__ import annotations

import socket
import sys
import threading
import time
from types import TracebackType
from typing import TextIO

import uvicorn
from fastapi import FastAPI

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


def _uvicorn_config(app: FastAPI) -> uvicorn.Config:
    # Quiet: uvicorn's own access log is off, the app logs each request as JSON itself.
    return uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")


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
