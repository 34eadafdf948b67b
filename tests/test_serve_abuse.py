"""``ownmark serve`` under abuse, and never answering from a broken model.

Real servers on 127.0.0.1 (uvicorn in a thread, as ``ownmark serve`` runs it) and real
sockets: clients that trickle their bodies or headers, clients that just hold connections,
more inference requests than the server computes at once; models whose weights or outputs
are NaN or infinite, or whose top scores tie. Time bounds are generous upper bounds that only
prove a limit is enforced.
"""

from __future__ import annotations

import contextlib
import copy
import json
import selectors
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import httpx
import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from torch import nn

from ownmark.cli import main
from ownmark.data import DataSplits
from ownmark.errors import ConfigError
from ownmark.models import Classifier, ModelSpec, save_model
from ownmark.serve import (
    BackgroundServer,
    OnnxBackend,
    ServeConfig,
    TorchBackend,
    check_finite_weights,
    create_app,
    export_onnx,
    load_backend,
)
from ownmark.verify.protocols import HttpPolicy, QueryError, V2Suspect
from ownmark.verify.suspects import InvalidAnswer
from ownmark.workflows import new_model

INFER = "/v2/models/model/infer"


@pytest.fixture(scope="module")
def model(small_digits: DataSplits) -> Classifier:
    return new_model("zhang_mnist", small_digits, seed=0).eval()


@pytest.fixture(scope="module")
def eight(small_digits: DataSplits) -> torch.Tensor:
    return small_digits.test.images[:8]


def _body(images: torch.Tensor) -> dict[str, Any]:
    tensor = {
        "name": "images",
        "shape": list(images.shape),
        "datatype": "UINT8",
        "data": images.reshape(-1).tolist(),
    }
    return {"inputs": [tensor]}


@contextlib.contextmanager
def _serving(backend: Any, **config: Any) -> Iterator[BackgroundServer]:
    with BackgroundServer(create_app(backend, ServeConfig(**config))) as server:
        yield server


def _error(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and "\n" not in body["error"]
    message: str = body["error"]
    return message


# ---------------------------------------------------------------------------------------------
# broken models


def test_a_model_with_a_nan_weight_is_refused_at_start(model: Classifier, tmp_path: Path) -> None:
    clone = copy.deepcopy(model)
    name, weight = next((n, p) for n, p in clone.named_parameters() if p.dim() > 1)
    with torch.no_grad():
        weight.view(-1)[3] = float("nan")
        weight.view(-1)[17] = float("inf")
    with pytest.raises(ConfigError) as info:
        TorchBackend(clone)
    message = str(info.value)
    assert repr(name) in message and "2 NaN or infinite value(s)" in message
    assert "\n" not in message
    path = tmp_path / "nan.safetensors"
    save_model(clone, path)
    with pytest.raises(ConfigError, match=name):
        load_backend(path)
    check_finite_weights(model)  # the healthy model passes
    TorchBackend(model)


def test_ownmark_serve_refuses_a_nan_model_in_one_line(
    model: Classifier, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    clone = copy.deepcopy(model)
    with torch.no_grad():
        next(iter(clone.parameters())).fill_(float("nan"))
    path = tmp_path / "broken.safetensors"
    save_model(clone, path)
    assert main(["serve", str(path), "--port", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "non-finite weights" in err


def test_an_onnx_model_with_a_nan_initializer_is_refused(model: Classifier, tmp_path: Path) -> None:
    path = export_onnx(model, tmp_path / "m.onnx")
    OnnxBackend(path)  # healthy
    proto = onnx.load(str(path))
    init = next(i for i in proto.graph.initializer if numpy_helper.to_array(i).size > 10)
    array = numpy_helper.to_array(init).copy()
    array.reshape(-1)[0] = np.nan
    init.CopyFrom(numpy_helper.from_array(array, init.name))
    onnx.save(proto, str(tmp_path / "nan.onnx"))
    with pytest.raises(ConfigError) as info:
        OnnxBackend(tmp_path / "nan.onnx")
    assert init.name in str(info.value) and "non-finite" in str(info.value)


class _BlowsUp(nn.Module):
    """Finite weights, but an image whose first pixel is darker than its second gets a NaN
    (or infinite) logit for class 3."""

    def __init__(self, poison: float) -> None:
        super().__init__()
        self.linear = nn.Linear(784, 10)
        self.poison = poison

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.linear(x.flatten(1))
        flat = x.flatten(1)  # normalised pixels
        hit = flat[:, 0] < flat[:, 1]
        column = torch.zeros_like(logits, dtype=torch.bool)
        column[:, 3] = hit
        return logits.masked_fill(column, self.poison)


@pytest.mark.parametrize("poison", [float("nan"), float("-inf"), float("inf")])
@pytest.mark.parametrize("answer", ["label", "topk", "probabilities"])
def test_non_finite_logits_at_run_time_answer_500(poison: float, answer: str) -> None:
    torch.manual_seed(0)
    net = Classifier(ModelSpec.with_defaults("custom.module:factory"), _BlowsUp(poison))
    backend = TorchBackend(net)  # finite weights: it starts
    images = torch.full((4, 1, 28, 28), 200, dtype=torch.uint8)
    images[[1, 3], 0, 0, 0] = 0  # these two get the poison
    with _serving(backend, answer=answer) as server, httpx.Client(base_url=server.url) as client:
        message = _error(client.post(INFER, json=_body(images)), 500)
        assert message.startswith("the model produced non-finite scores")
        assert "image(s) 1, 3 " in message
        healthy = client.post(INFER, json=_body(images[[0, 2]]))
        assert healthy.status_code == 200 and "NaN" not in healthy.text


class _Uniform(nn.Module):
    """Every class scores the same: a model pruned to nothing."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.zeros(len(x), 10)


def test_tied_top_scores_answer_500_for_labels_and_are_invalid_for_the_client() -> None:
    backend = TorchBackend(Classifier(ModelSpec.with_defaults("custom.module:factory"), _Uniform()))
    images = torch.zeros(3, 1, 28, 28, dtype=torch.uint8)
    policy = HttpPolicy(retries=0)
    for answer in ("label", "topk"):
        with _serving(backend, answer=answer) as server:
            with httpx.Client(base_url=server.url) as client:
                message = _error(client.post(INFER, json=_body(images)), 500)
                assert "top scores tie for image(s) 0, 1, 2" in message
            with (
                V2Suspect(server.url, "model", policy=policy) as suspect,
                pytest.raises(QueryError, match="HTTP 500"),
            ):
                suspect.query(images)
    with (
        _serving(backend, answer="probabilities") as server,
        V2Suspect(server.url, "model", policy=policy) as suspect,
    ):
        answers = suspect.query(images)
    assert all(isinstance(a, InvalidAnswer) and "tied" in a.reason for a in answers)


# ---------------------------------------------------------------------------------------------
# concurrency


class _Gate:
    """A backend that holds every forward pass until released, counting those inside."""

    platform = "pytorch"
    num_classes = 3
    input_shape = (1, 2, 2)
    description: ClassVar[dict[str, str]] = {"arch": "gate"}

    def __init__(self) -> None:
        self.inside = 0
        self.release = threading.Event()
        self._lock = threading.Lock()

    def predict_proba(self, images: np.ndarray) -> np.ndarray:
        with self._lock:
            self.inside += 1
        self.release.wait(30)
        return np.tile(np.array([[0.2, 0.7, 0.1]], dtype=np.float32), (len(images), 1))


def test_more_inference_requests_than_max_concurrency_get_503() -> None:
    gate = _Gate()
    body = _body(torch.zeros(1, 1, 2, 2, dtype=torch.uint8))
    with _serving(gate, max_concurrency=2) as server:
        results: list[int] = []

        def ask() -> None:
            results.append(httpx.post(server.url + INFER, json=body, timeout=60).status_code)

        workers = [threading.Thread(target=ask) for _ in range(2)]
        for worker in workers:
            worker.start()
        deadline = time.monotonic() + 20
        while gate.inside < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert gate.inside == 2
        busy = httpx.post(server.url + INFER, json=body, timeout=10)
        assert "busy" in _error(busy, 503) and busy.headers["retry-after"] == "1"
        assert httpx.get(server.url + "/v2/health/ready").status_code == 200  # not inference
        gate.release.set()
        for worker in workers:
            worker.join(30)
        assert results == [200, 200]
        assert httpx.post(server.url + INFER, json=body).status_code == 200


# ---------------------------------------------------------------------------------------------
# slow clients


HEAD = (
    "POST /v2/models/model/infer HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    "Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n"
)


class SlowClients:
    """``n`` raw connections, each sending ``HEAD`` (all of it, or a byte at a time) and then
    its body a byte at a time, from one thread; records what each got back."""

    def __init__(self, url: str, n: int, *, trickle_head: bool) -> None:
        host, port = url.removeprefix("http://").split(":")
        self.sockets = [socket.create_connection((host, int(port)), timeout=10) for _ in range(n)]
        self.data = [HEAD.encode() + b"[" * 100_000 for _ in range(n)]
        self.position = [0 if trickle_head else len(HEAD) for _ in range(n)]
        self.answer = [b""] * n
        self.ended = [0.0] * n  # when the server answered or closed (monotonic)
        self.stop = threading.Event()
        if not trickle_head:
            for sock in self.sockets:
                sock.sendall(HEAD.encode())
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.start = time.monotonic()
        self.thread.start()

    def _run(self) -> None:
        selector = selectors.DefaultSelector()
        for i, sock in enumerate(self.sockets):
            sock.setblocking(False)
            selector.register(sock, selectors.EVENT_READ, i)
        open_ = set(range(len(self.sockets)))
        while open_ and not self.stop.is_set():
            for key, _ in selector.select(timeout=0.5):
                i = key.data
                try:
                    chunk = self.sockets[i].recv(65536)
                except OSError:
                    chunk = b""
                self.answer[i] += chunk
                if not chunk or b"\r\n\r\n" in self.answer[i]:
                    selector.unregister(self.sockets[i])
                    open_.discard(i)
                    self.ended[i] = time.monotonic()
            for i in list(open_):  # one more byte from each, every half second
                with contextlib.suppress(OSError):
                    self.sockets[i].send(self.data[i][self.position[i] : self.position[i] + 1])
                    self.position[i] += 1

    def close(self) -> None:
        self.stop.set()
        self.thread.join(10)
        for sock in self.sockets:
            sock.close()

    def wait(self, seconds: float) -> None:
        self.thread.join(seconds)


@pytest.mark.parametrize("trickle_head", [False, True], ids=["bodies", "headers"])
def test_100_slow_clients_do_not_stop_a_normal_request(
    model: Classifier, eight: torch.Tensor, trickle_head: bool
) -> None:
    with _serving(TorchBackend(model), body_timeout=3.0, header_timeout=3.0) as server:
        slow = SlowClients(server.url, 100, trickle_head=trickle_head)
        try:
            time.sleep(0.5)  # all 100 connected and trickling
            connected = sum(1 for ended in slow.ended if ended == 0.0)
            start = time.monotonic()
            response = httpx.post(server.url + INFER, json=_body(eight), timeout=60)
            took = time.monotonic() - start
            assert response.status_code == 200 and took < 15, (response.status_code, took)
            assert connected == 100  # the normal request was sent while all 100 held on
            slow.wait(30)
            assert all(slow.ended), "some slow clients were never cut"
            assert max(slow.ended) - slow.start < 20  # 100 kB at 2 bytes/s would take 14 h
            statuses = {answer.split(b" ", 2)[1] if answer else b"closed" for answer in slow.answer}
            assert statuses <= {b"408", b"closed"}, statuses
            if not trickle_head:
                assert b"408" in statuses
                first = next(a for a in slow.answer if a.startswith(b"HTTP/1.1 408"))
                assert b"connection: close" in first.lower()
        finally:
            slow.close()
        # And afterwards the server still answers.
        assert httpx.post(server.url + INFER, json=_body(eight)).status_code == 200


def test_idle_connections_are_closed_and_max_connections_holds(model: Classifier) -> None:
    with _serving(TorchBackend(model), header_timeout=2.0, max_connections=4) as server:
        host, port = server.url.removeprefix("http://").split(":")
        idle = [socket.create_connection((host, int(port)), timeout=30) for _ in range(4)]
        try:
            time.sleep(0.3)
            full = httpx.get(server.url + "/v2/health/live", timeout=10)
            assert full.status_code == 503  # uvicorn's own limit
            start = time.monotonic()
            for sock in idle:  # each is closed by the server: recv returns b""
                assert sock.recv(1) == b""
            assert time.monotonic() - start < 15
            assert httpx.get(server.url + "/v2/health/live", timeout=10).status_code == 200
        finally:
            for sock in idle:
                sock.close()


def test_serve_config_limits_are_validated() -> None:
    for field, value in (
        ("max_concurrency", 0),
        ("max_connections", True),
        ("body_timeout", 0),
        ("header_timeout", float("nan")),
        ("body_timeout", "10"),
    ):
        with pytest.raises(ConfigError, match=field):
            ServeConfig(**{field: value})
    config = ServeConfig()
    assert (config.max_concurrency, config.body_timeout, config.header_timeout) == (8, 10.0, 10.0)
    assert config.max_connections == 256
    assert json.dumps(config.body_timeout) == "10.0"
