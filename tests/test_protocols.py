"""The client side of remote verification, against real HTTP servers on 127.0.0.1.

Each test starts a small threaded HTTP server whose answer it scripts, so the client's real
HTTP stack (httpx, sockets, headers, status codes) is exercised. The model behind the fake
servers labels an image by the sum of its pixels mod 10, so a test knows exactly which labels
the client must return, and a wrongly encoded batch gives wrong labels. Waiting is checked
with a fake clock and sleep: no test sleeps for real except the timeout test (0.2 s).
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import re
import socket
import tempfile
import textwrap
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from ownmark.errors import ConfigError, OwnmarkError
from ownmark.keys import KeySet
from ownmark.verify import Verdict, verify_ownership
from ownmark.verify.protocols import (
    CallableSuspect,
    HttpPolicy,
    QueryError,
    TemplateSuspect,
    V2Suspect,
    load_adapter,
    normalize_answers,
    open_suspect,
    parse_v2_response,
)
from ownmark.verify.remote import (
    InputEncoding,
    TorchServeSuspect,
    WireFormat,
    parse_torchserve_answer,
    png_bytes,
    read_labels,
    request_bodies,
)
from ownmark.verify.suspects import InvalidAnswer, Suspect, SuspectCounters

# ---------------------------------------------------------------------------------------------
# a scriptable HTTP server


@dataclass
class Seen:
    """One request as the server saw it."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


Reply = tuple[int, dict[str, str], bytes]


def reply(payload: object, status: int = 200, **headers: str) -> Reply:
    return status, {"Content-Type": "application/json", **headers}, json.dumps(payload).encode()


@dataclass
class FakeServer:
    """What a test scripts (``respond``) and observes (``seen``, ``decoded``)."""

    url: str = ""
    respond: Callable[[Seen], Reply] = lambda seen: reply({"error": "not scripted"}, 500)
    seen: list[Seen] = field(default_factory=list)
    decoded: list[np.ndarray] = field(default_factory=list)  # pixels a custom API decoded
    release: threading.Event = field(default_factory=threading.Event)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _handle(self) -> None:
        state: FakeServer = self.server.state  # type: ignore[attr-defined]
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        seen = Seen(self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, body)
        state.seen.append(seen)
        status, headers, payload = state.respond(seen)
        try:
            # send_response_only: no automatic Date header, so tests can set their own.
            self.send_response_only(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
        except OSError:
            pass  # the client gave up (timeout test)

    do_GET = do_POST = do_PUT = _handle

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def _httpd() -> Iterator[ThreadingHTTPServer]:
    """One server for the module (starting one per test costs more than the tests)."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05})
    thread.daemon = True
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=5)


@pytest.fixture
def server(_httpd: ThreadingHTTPServer) -> Iterator[FakeServer]:
    """The server, with a fresh script and record for this test."""
    state = FakeServer(url=f"http://127.0.0.1:{_httpd.server_address[1]}")
    _httpd.state = state  # type: ignore[attr-defined]
    yield state
    state.release.set()  # frees a handler still blocked in a slow reply


class FakeTime:
    """A clock that moves only when the client sleeps (or a test advances it)."""

    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    def clock(self) -> float:
        return self.now


@pytest.fixture
def fake_time() -> FakeTime:
    return FakeTime()


# ---------------------------------------------------------------------------------------------
# the model behind the fake servers


def make_images(
    n: int = 8, shape: tuple[int, int, int] = (1, 28, 28), seed: int = 0
) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, *shape), dtype=torch.uint8, generator=generator)


def labels_of(pixels: np.ndarray | torch.Tensor) -> list[int]:
    """The fake model: sum of pixels mod 10."""
    array = np.asarray(pixels, dtype=np.int64)
    return [int(v) for v in array.reshape(len(array), -1).sum(axis=1) % 10]


def one_hot_rows(labels: list[int], classes: int = 10) -> list[list[float]]:
    return [[0.9 if c == label else 0.01 for c in range(classes)] for label in labels]


def v2_outputs(mode: str, labels: list[int]) -> list[dict[str, Any]]:
    n = len(labels)
    label = {"name": "label", "datatype": "INT64", "shape": [n], "data": labels}
    ranks = [[lab, (lab + 1) % 10, (lab + 2) % 10] for lab in labels]
    topk = [
        {
            "name": "topk_labels",
            "datatype": "INT64",
            "shape": [n, 3],
            "data": [v for row in ranks for v in row],
        },
        {"name": "topk_scores", "datatype": "FP32", "shape": [n, 3], "data": [0.8, 0.1, 0.05] * n},
    ]
    rows = one_hot_rows(labels)
    probabilities = {"name": "probabilities", "datatype": "FP32", "shape": [n, 10]}
    if mode == "label":
        return [label]
    if mode == "label+topk":
        return [label, *topk]
    if mode == "topk":
        return topk
    if mode == "probabilities":
        return [{**probabilities, "data": [v for row in rows for v in row]}]
    if mode == "triton_labels":  # Triton naming, [N, 1] INT32
        return [{"name": "OUTPUT__0", "datatype": "INT32", "shape": [n, 1], "data": labels}]
    if mode == "nested_logits":  # any name, nested data, FP16
        return [{"name": "logits", "datatype": "FP16", "shape": [n, 10], "data": rows}]
    if mode == "short":  # one label missing
        return [{**label, "shape": [n - 1], "data": labels[:-1]}]
    raise AssertionError(mode)


METADATA = {
    "name": "net",
    "versions": ["1"],
    "platform": "pytorch_torchscript",
    "inputs": [{"name": "images", "datatype": "UINT8", "shape": [-1, 1, 28, 28]}],
    "outputs": [{"name": "label", "datatype": "INT64", "shape": [-1]}],
    "parameters": {},
}


def v2_model(mode: str = "label") -> Callable[[Seen], Reply]:
    """A correct v2 server for the model "net" answering in ``mode``."""

    def respond(seen: Seen) -> Reply:
        if seen.method == "GET" and seen.path == "/v2/models/net":
            return reply(METADATA)
        if seen.method == "GET" and seen.path == "/v2/health/ready":
            return reply({"ready": True})
        if seen.method != "POST" or seen.path != "/v2/models/net/infer":
            return reply({"error": f"unknown model or path {seen.path}"}, 404)
        request = seen.json()
        tensor = request["inputs"][0]
        pixels = np.array(tensor["data"], dtype=np.int64).reshape(tensor["shape"])
        outputs = v2_outputs(mode, labels_of(pixels))
        return reply(
            {"model_name": "net", "model_version": "1", "id": request["id"], "outputs": outputs}
        )

    return respond


def scripted(
    *replies: Reply, then: Callable[[Seen], Reply] | None = None
) -> Callable[[Seen], Reply]:
    """Answer with ``replies`` in order, then with ``then`` (default: the last reply again)."""
    queue = list(replies)

    def respond(seen: Seen) -> Reply:
        if queue:
            return queue.pop(0)
        assert then is not None
        return then(seen)

    return respond


def no_wait(**fields: Any) -> HttpPolicy:
    return HttpPolicy(**{"timeout": 5.0, **fields})


# ---------------------------------------------------------------------------------------------
# v2: answers


@pytest.mark.parametrize(
    ("url", "model"),
    [
        ("{base}", "net"),
        ("{base}/", "net"),
        ("{base}/v2/models/net", None),
        ("{base}/v2/models/net/infer", None),
    ],
)
def test_v2_returns_the_models_labels(server: FakeServer, url: str, model: str | None) -> None:
    server.respond = v2_model("label")
    images = make_images(8)
    with V2Suspect(url.format(base=server.url), model) as suspect:
        assert suspect.query(images) == labels_of(images)
        assert suspect.address == f"{server.url}/v2/models/net/infer"
        assert suspect.protocol == "v2"
        assert (suspect.requests_sent, suspect.images_sent, suspect.retries_done) == (1, 8, 0)
    request = server.seen[0].json()
    assert server.seen[0].headers["content-type"] == "application/json"
    (tensor,) = request["inputs"]
    assert tensor["name"] == "images"
    assert tensor["datatype"] == "UINT8"
    assert tensor["shape"] == [8, 1, 28, 28]
    assert tensor["data"] == images.reshape(-1).tolist()  # flat, row-major


def test_v2_request_ids_are_unique(server: FakeServer) -> None:
    server.respond = v2_model("label")
    with V2Suspect(server.url, "net") as suspect:
        for seed in range(3):
            suspect.query(make_images(2, seed=seed))
    ids = [seen.json()["id"] for seen in server.seen]
    assert len(set(ids)) == 3 and all(isinstance(i, str) and i for i in ids)


@pytest.mark.parametrize(
    ("mode", "answer"),
    [
        ("label", "label"),
        ("label+topk", "auto"),
        ("label+topk", "topk"),
        ("topk", "auto"),
        ("probabilities", "auto"),
        ("probabilities", "probabilities"),
        ("triton_labels", "auto"),
        ("triton_labels", "label"),
        ("nested_logits", "auto"),
        ("nested_logits", "probabilities"),
    ],
)
def test_v2_output_kinds(server: FakeServer, mode: str, answer: str) -> None:
    server.respond = v2_model(mode)
    images = make_images(8, (3, 8, 8))
    with V2Suspect(f"{server.url}/v2/models/net", answer=answer) as suspect:
        assert suspect.query(images) == labels_of(images)


def test_v2_labels_expected_but_probabilities_answered(server: FakeServer) -> None:
    server.respond = v2_model("probabilities")
    with (
        V2Suspect(server.url, "net", answer="label") as suspect,
        pytest.raises(QueryError) as info,
    ):
        suspect.query(make_images(8))
    assert str(info.value) == (
        "the API answers probabilities [8, 10] but labels were expected; "
        "rerun with --answer auto or --answer probabilities"
    )


def test_v2_topk_scores_are_never_taken_for_class_scores(server: FakeServer) -> None:
    server.respond = v2_model("topk")
    with (
        V2Suspect(server.url, "net", answer="probabilities") as suspect,
        pytest.raises(QueryError, match="--answer topk"),
    ):
        suspect.query(make_images(4))


def test_v2_wrong_number_of_labels(server: FakeServer) -> None:
    server.respond = v2_model("short")
    with V2Suspect(server.url, "net") as suspect, pytest.raises(QueryError) as info:
        suspect.query(make_images(8))
    assert str(info.value) == "expected 8 labels, got 7"


def test_v2_malformed_json_is_not_retried(server: FakeServer, fake_time: FakeTime) -> None:
    server.respond = lambda seen: (200, {"Content-Type": "application/json"}, b'{"outputs": [')
    suspect = V2Suspect(server.url, "net", sleep=fake_time.sleep, clock=fake_time.clock)
    with suspect, pytest.raises(QueryError, match="malformed JSON in the answer"):
        suspect.query(make_images(2))
    assert suspect.requests_sent == 1 and fake_time.sleeps == []


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ([1, 2], "not an object"),
        ({"model_name": "net"}, "no 'outputs' list"),
        ({"error": "model crashed"}, "model crashed"),
        ({"id": "someone-else", "outputs": []}, "is for request 'someone-else'"),
        (
            {"outputs": [{"name": "label", "datatype": "INT64", "shape": [2], "data": [1.5, 2]}]},
            "not an integer label",
        ),
        (
            {"outputs": [{"name": "label", "datatype": "INT64", "shape": [3], "data": [1, 2]}]},
            "shape [3] but 2 values",
        ),
        (
            {"outputs": [{"name": "x", "datatype": "FP32", "shape": [2, 2], "data": [1, 0, 2]}]},
            "shape [2, 2] but 3 values",
        ),
        (
            {
                "outputs": [
                    {"name": "probabilities", "datatype": "FP32", "shape": [2, 1], "data": [1, 0]}
                ]
            },
            "1 score per image",
        ),
        (
            {
                "outputs": [
                    {"name": "a", "datatype": "INT64", "shape": [2], "data": [1, 0]},
                    {"name": "b", "datatype": "INT32", "shape": [2], "data": [1, 0]},
                ]
            },
            "several possible labels (a [2], b [2])",
        ),
    ],
)
def test_v2_invalid_answers(server: FakeServer, payload: object, message: str) -> None:
    server.respond = lambda seen: reply(payload)
    with (
        V2Suspect(server.url, "net") as suspect,
        pytest.raises(QueryError, match=re.escape(message)),
    ):
        suspect.query(make_images(2))


def test_v2_nan_scores_give_an_invalid_answer_for_that_image_only() -> None:
    # The JSON module writes and reads NaN, as some servers do.
    payload = json.loads(
        '{"outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [2, 2],'
        ' "data": [0.1, 0.9, NaN, 0.2]}]}'
    )
    good, bad = parse_v2_response(payload, 2)
    assert good == 1
    assert isinstance(bad, InvalidAnswer) and "non-finite" in bad.reason


# ---------------------------------------------------------------------------------------------
# v2: retries, errors, waiting


def test_http_500_always_fails_after_the_retries(server: FakeServer, fake_time: FakeTime) -> None:
    server.respond = lambda seen: reply({"error": "model exploded\nat line 3"}, 500)
    suspect = V2Suspect(
        server.url, "net", policy=no_wait(retries=2), sleep=fake_time.sleep, clock=fake_time.clock
    )
    with suspect, pytest.raises(QueryError) as info:
        suspect.query(make_images(2))
    assert str(info.value) == (
        f"HTTP 500 from {server.url}/v2/models/net/infer after 2 retries: model exploded at line 3"
    )
    assert (suspect.requests_sent, suspect.retries_done, len(fake_time.sleeps)) == (3, 2, 2)


def test_500_twice_then_ok_backs_off(server: FakeServer) -> None:
    def run(seed: int) -> list[float]:
        clock = FakeTime()
        server.respond = scripted(
            reply({"error": "busy"}, 500), reply({"error": "busy"}, 503), then=v2_model("label")
        )
        images = make_images(4)
        policy = no_wait(backoff=0.5)
        with V2Suspect(
            server.url, "net", policy=policy, sleep=clock.sleep, clock=clock.clock, seed=seed
        ) as suspect:
            assert suspect.query(images) == labels_of(images)
            assert (suspect.requests_sent, suspect.retries_done) == (3, 2)
        return clock.sleeps

    waits = run(seed=0)
    assert len(waits) == 2
    assert 0.25 <= waits[0] <= 0.5 and 0.5 <= waits[1] <= 1.0  # doubling, jittered down
    assert run(seed=0) == waits  # seeded jitter: the same waits every time
    assert run(seed=1) != waits


def test_backoff_is_capped(server: FakeServer, fake_time: FakeTime) -> None:
    server.respond = lambda seen: reply({"error": "down"}, 502)
    policy = no_wait(retries=5, backoff=1.0, max_backoff=2.0)
    suspect = V2Suspect(server.url, "net", policy=policy, sleep=fake_time.sleep)
    with suspect, pytest.raises(QueryError, match=r"HTTP 502 .* after 5 retries"):
        suspect.query(make_images(1))
    assert all(w <= 2.0 for w in fake_time.sleeps) and len(fake_time.sleeps) == 5


def test_429_honours_retry_after_seconds(server: FakeServer, fake_time: FakeTime) -> None:
    server.respond = scripted(
        reply({"error": "slow down"}, 429, **{"Retry-After": "2"}), then=v2_model("label")
    )
    images = make_images(3)
    suspect = V2Suspect(server.url, "net", sleep=fake_time.sleep, clock=fake_time.clock)
    with suspect:
        assert suspect.query(images) == labels_of(images)
    assert fake_time.sleeps == [2.0]
    assert suspect.retries_done == 1


def test_429_honours_retry_after_http_date(server: FakeServer, fake_time: FakeTime) -> None:
    # Measured against the server's Date header, not this machine's clock.
    headers = {
        "Date": "Wed, 21 Oct 2015 07:28:00 GMT",
        "Retry-After": "Wed, 21 Oct 2015 07:28:03 GMT",
    }
    server.respond = scripted(reply({"error": "slow down"}, 429, **headers), then=v2_model("label"))
    suspect = V2Suspect(server.url, "net", sleep=fake_time.sleep, clock=fake_time.clock)
    with suspect:
        suspect.query(make_images(2))
    assert fake_time.sleeps == [3.0]


def test_429_without_retry_after_backs_off(server: FakeServer, fake_time: FakeTime) -> None:
    server.respond = scripted(reply({"error": "slow down"}, 429), then=v2_model("label"))
    suspect = V2Suspect(server.url, "net", sleep=fake_time.sleep, clock=fake_time.clock)
    with suspect:
        suspect.query(make_images(2))
    assert len(fake_time.sleeps) == 1 and 0.25 <= fake_time.sleeps[0] <= 0.5


def test_429_retry_after_too_long_fails_at_once(server: FakeServer, fake_time: FakeTime) -> None:
    server.respond = lambda seen: reply({"error": "quota"}, 429, **{"Retry-After": "600"})
    policy = no_wait(max_retry_after=120.0)
    suspect = V2Suspect(server.url, "net", policy=policy, sleep=fake_time.sleep)
    with suspect, pytest.raises(QueryError) as info:
        suspect.query(make_images(2))
    assert "Retry-After" in str(info.value) and "600 s" in str(info.value)
    assert suspect.requests_sent == 1 and fake_time.sleeps == []


def test_http_policy_defaults_bound_a_hostile_server() -> None:
    policy = HttpPolicy()
    assert (policy.deadline, policy.total_seconds, policy.max_retry_after) == (60.0, 600.0, 30.0)
    assert policy.max_response_bytes == 8 * 2**20
    unbounded = HttpPolicy(deadline=None, total_seconds=None)
    assert unbounded.deadline is None and unbounded.total_seconds is None


def test_backoff_stops_at_the_time_budget(server: FakeServer, fake_time: FakeTime) -> None:
    server.respond = lambda seen: reply({"error": "down"}, 502)
    policy = no_wait(retries=50, backoff=1.0, max_backoff=8.0, total_seconds=20.0)
    suspect = V2Suspect(
        server.url, "net", policy=policy, sleep=fake_time.sleep, clock=fake_time.clock
    )
    with suspect:
        with pytest.raises(QueryError) as info:
            suspect.query(make_images(1))
        message = str(info.value)
        assert message.startswith(f"HTTP 502 from {server.url}/v2/models/net/infer after ")
        assert "time budget exhausted" in message and "20 s allowed" in message
        assert sum(fake_time.sleeps) < 20.0 and suspect.requests_sent < 51
        # Once spent, nothing more is sent.
        fake_time.now += 20.0
        before = len(server.seen)
        with pytest.raises(QueryError, match=r"^time budget exhausted: the 20 s"):
            suspect.query(make_images(1))
        assert len(server.seen) == before


def test_rate_limit_wait_past_the_budget_fails(server: FakeServer, fake_time: FakeTime) -> None:
    server.respond = v2_model("label")
    policy = no_wait(rate_limit=0.1, total_seconds=5.0)  # one request per 10 s
    suspect = V2Suspect(
        server.url, "net", policy=policy, sleep=fake_time.sleep, clock=fake_time.clock
    )
    with suspect:
        suspect.query(make_images(1))
        with pytest.raises(QueryError, match=r"rate limit .* time budget exhausted"):
            suspect.query(make_images(1))
    assert len(server.seen) == 1 and fake_time.sleeps == []


def test_401_asks_for_a_token_and_the_token_is_sent(server: FakeServer) -> None:
    model = v2_model("label")

    def respond(seen: Seen) -> Reply:
        if seen.headers.get("authorization") != "Bearer s3cret":
            return reply({"error": "missing or bad token"}, 401)
        return model(seen)

    server.respond = respond
    images = make_images(2)
    with V2Suspect(server.url, "net") as suspect, pytest.raises(QueryError) as info:
        suspect.query(images)
    assert "HTTP 401" in str(info.value) and "missing or bad token" in str(info.value)
    assert "--token" in str(info.value)
    assert len(server.seen) == 1  # not retried

    policy = HttpPolicy(token="s3cret", headers=(("X-Trace", "abc"),))
    with V2Suspect(server.url, "net", policy=policy) as suspect:
        assert suspect.query(images) == labels_of(images)
    assert server.seen[-1].headers["authorization"] == "Bearer s3cret"
    assert server.seen[-1].headers["x-trace"] == "abc"


@pytest.mark.parametrize(
    ("status", "hint"), [(400, "HTTP 400"), (404, "model name"), (413, "--batch")]
)
def test_client_errors_are_not_retried(
    server: FakeServer, fake_time: FakeTime, status: int, hint: str
) -> None:
    server.respond = lambda seen: reply({"error": "nope"}, status)
    suspect = V2Suspect(server.url, "net", sleep=fake_time.sleep)
    with suspect, pytest.raises(QueryError, match=hint):
        suspect.query(make_images(2))
    assert suspect.requests_sent == 1 and fake_time.sleeps == []


def test_slow_server_times_out(server: FakeServer) -> None:
    def slow(seen: Seen) -> Reply:
        server.release.wait(1.0)  # set at teardown, so the fixture does not wait for it
        return reply({"outputs": []})

    server.respond = slow
    policy = HttpPolicy(timeout=0.2, retries=0)
    with V2Suspect(server.url, "net", policy=policy) as suspect, pytest.raises(QueryError) as info:
        suspect.query(make_images(2))
    assert str(info.value) == (
        f"POST {server.url}/v2/models/net/infer timed out: no answer within 0.2 s; "
        "raise --timeout if the server is slow"
    )


def test_server_down(fake_time: FakeTime) -> None:
    with socket.socket() as probe:  # a port that nothing listens on once closed
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    policy = no_wait(retries=1)
    suspect = V2Suspect(f"http://127.0.0.1:{port}", "net", policy=policy, sleep=fake_time.sleep)
    with suspect, pytest.raises(QueryError) as info:
        suspect.query(make_images(2))
    message = str(info.value)
    assert message.startswith(f"cannot connect to http://127.0.0.1:{port} (")
    assert "after 1 retry" in message and "is the server running?" in message
    assert "\n" not in message
    assert suspect.requests_sent == 2


def test_rate_limit_spaces_requests(server: FakeServer, fake_time: FakeTime) -> None:
    server.respond = v2_model("label")
    starts: list[float] = []
    model = v2_model("label")

    def respond(seen: Seen) -> Reply:
        starts.append(fake_time.now)
        return model(seen)

    server.respond = respond
    policy = HttpPolicy(rate_limit=4.0)
    suspect = V2Suspect(
        server.url, "net", policy=policy, sleep=fake_time.sleep, clock=fake_time.clock
    )
    with suspect:
        for _ in range(3):
            suspect.query(make_images(1))
        fake_time.now += 0.1  # time that passes on its own counts towards the spacing
        suspect.query(make_images(1))
        fake_time.now += 1.0
        suspect.query(make_images(1))
    assert fake_time.sleeps == pytest.approx([0.25, 0.25, 0.15])
    gaps = np.diff(starts)
    assert all(gap >= 0.25 - 1e-9 for gap in gaps)


def test_rate_limit_applies_to_retries(server: FakeServer, fake_time: FakeTime) -> None:
    server.respond = scripted(reply({"error": "x"}, 500), then=v2_model("label"))
    policy = HttpPolicy(rate_limit=0.5, backoff=0.5)  # at most one request per 2 s
    suspect = V2Suspect(
        server.url, "net", policy=policy, sleep=fake_time.sleep, clock=fake_time.clock
    )
    with suspect:
        suspect.query(make_images(1))
    backoff, pace = fake_time.sleeps
    assert backoff + pace == pytest.approx(2.0)


# ---------------------------------------------------------------------------------------------
# v2: metadata and input shape


def test_metadata_and_input_shape(server: FakeServer) -> None:
    server.respond = v2_model("label")
    with V2Suspect(server.url, "net") as suspect:
        assert suspect.metadata()["name"] == "net"
        suspect.check_input_shape((1, 28, 28))
        with pytest.raises(ConfigError) as info:
            suspect.check_input_shape((3, 32, 32))
        assert "[-1, 1, 28, 28]" in str(info.value) and "3×32×32" in str(info.value)
        assert suspect.requests_sent == 1  # metadata is fetched once


@pytest.mark.parametrize(
    ("declared", "error"),
    [
        ({"name": "images", "datatype": "UINT8", "shape": [-1, 3, -1, -1]}, None),
        ({"name": "images", "datatype": "UINT8", "shape": [3, 32, 32]}, None),
        ({"name": "INPUT__0", "datatype": "UINT8", "shape": [-1, 3, 32, 32]}, "INPUT__0"),
        ({"name": "images", "datatype": "FP32", "shape": [-1, 3, 32, 32]}, "FP32"),
        ({"name": "images", "datatype": "UINT8", "shape": [-1, 1, 32, 32]}, "of shape"),
    ],
)
def test_check_input_shape_variants(
    server: FakeServer, declared: dict[str, Any], error: str | None
) -> None:
    server.respond = lambda seen: reply({**METADATA, "inputs": [declared]})
    with V2Suspect(server.url, "net") as suspect:
        if error is None:
            suspect.check_input_shape((3, 32, 32))
        else:
            with pytest.raises(ConfigError, match=error):
                suspect.check_input_shape((3, 32, 32))


@pytest.mark.parametrize(
    ("url", "model", "message"),
    [
        ("127.0.0.1:8000", "net", "http://"),
        ("ftp://host/v2/models/net", None, "http://"),
        ("http://host:8000", None, "--model-name NAME"),
        ("http://host:8000/v2/models/net", "other", "names model 'net'"),
        ("http://host:8000/v2/models/net?x=1", None, "query"),
    ],
)
def test_v2_bad_urls(url: str, model: str | None, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        V2Suspect(url, model)


def test_v2_versioned_url_and_prefix() -> None:
    suspect = V2Suspect("https://host/api/v2/models/my%20net/versions/2/infer")
    assert suspect.address == "https://host/api/v2/models/my%20net/versions/2/infer"
    assert suspect.model == "my net"
    suspect.close()


def test_bad_images_are_a_config_error(server: FakeServer) -> None:
    with V2Suspect(server.url, "net") as suspect:
        with pytest.raises(ConfigError, match="uint8"):
            suspect.query(torch.zeros(2, 1, 4, 4))
        assert suspect.query(torch.zeros(0, 1, 4, 4, dtype=torch.uint8)) == []
    assert server.seen == []


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"timeout": 0}, "timeout"),
        ({"timeout": float("nan")}, "timeout"),
        ({"retries": -1}, "retries"),
        ({"retries": 1.5}, "retries"),
        ({"backoff": -0.1}, "backoff"),
        ({"rate_limit": 0.0}, "rate_limit"),
        ({"token": "Bearer abc"}, "token"),
        ({"token": ""}, "token"),
        ({"headers": (("Bad Name", "x"),)}, "header name"),
        ({"headers": (("X-A", "a\r\nInjected: 1"),)}, "one-line"),
        ({"deadline": 0}, "deadline"),
        ({"deadline": float("inf")}, "deadline"),
        ({"total_seconds": -1.0}, "total_seconds"),
        ({"max_response_bytes": 0}, "max_response_bytes"),
        ({"max_response_bytes": 1.5}, "max_response_bytes"),
        ({"max_retry_after": -1}, "max_retry_after"),
    ],
)
def test_http_policy_validation(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        HttpPolicy(**fields)


# ---------------------------------------------------------------------------------------------
# the verifier sees what the client returns


def test_verify_ownership_through_v2(server: FakeServer) -> None:
    images = make_images(40)
    labels = torch.tensor(labels_of(images), dtype=torch.int64)
    # A control group the fake model classifies correctly, whose key label it never gives.
    decoys = make_images(40, seed=1)
    decoy_labels = torch.tensor(labels_of(decoys), dtype=torch.int64)
    key = KeySet(
        images,
        labels,
        images.clone(),
        "content",
        {},
        "test",
        10,
        0,
        decoys=decoys,
        decoy_labels=decoy_labels,
        decoy_key_labels=(decoy_labels + 1) % 10,
    )
    server.respond = v2_model("label")
    with V2Suspect(server.url, "net") as suspect:
        result = verify_ownership(key, suspect)
    assert result.verdict is Verdict.OWNED and result.errors == 0

    server.respond = lambda seen: reply({"error": "down"}, 500)
    with V2Suspect(server.url, "net", policy=no_wait(retries=0)) as suspect:
        result = verify_ownership(key, suspect)
    assert result.verdict is not Verdict.OWNED and result.matches == 0 and result.errors > 0


# ---------------------------------------------------------------------------------------------
# templates


def custom_api(encoding: str, state: FakeServer) -> Callable[[Seen], Reply]:
    """A non-v2 JSON API: {"instances": ...} in, {"predictions": [{"label": ...}]} out."""

    def respond(seen: Seen) -> Reply:
        if seen.headers.get("x-api-key") != "k":
            return reply({"detail": "bad api key"}, 403)
        instances = seen.json()["payload"]["instances"]
        shape = seen.json()["payload"]["shape"]
        if encoding == "nested":
            pixels = np.array(instances, dtype=np.uint8)
        elif encoding == "flat":
            pixels = np.array(instances, dtype=np.uint8).reshape(shape)
        else:
            decoded = [np.array(Image.open(io.BytesIO(base64.b64decode(s)))) for s in instances]
            pixels = np.stack([d[None] if d.ndim == 2 else d.transpose(2, 0, 1) for d in decoded])
        state.decoded.append(pixels)
        return reply({"predictions": [{"label": label} for label in labels_of(pixels)]})

    return respond


@pytest.mark.parametrize("encoding", ["nested", "flat", "png_base64"])
@pytest.mark.parametrize("channels", [1, 3])
def test_template_encodings(server: FakeServer, encoding: str, channels: int) -> None:
    server.respond = custom_api(encoding, server)
    images = make_images(5, (channels, 6, 7))
    template = {
        "url": f"{server.url}/predict",
        "headers": {"X-Api-Key": "k"},
        "encoding": encoding,
        "body": {"payload": {"instances": "$images", "shape": list(images.shape)}},
        "answers": "predictions.*.label",
    }
    with TemplateSuspect(template) as suspect:
        assert suspect.query(images) == labels_of(images)
        assert suspect.protocol == "template" and suspect.address == f"{server.url}/predict"
    np.testing.assert_array_equal(server.decoded[0], images.numpy())
    assert server.seen[0].method == "POST" and server.seen[0].path == "/predict"


def test_template_file_with_url_from_open_suspect(server: FakeServer, tmp_path: Path) -> None:
    def respond(seen: Seen) -> Reply:
        pixels = np.array(seen.json()["x"], dtype=np.int64)
        scores = one_hot_rows(labels_of(pixels))
        return reply({"outputs": [{"data": scores}]})

    server.respond = respond
    path = tmp_path / "api.json"
    path.write_text(
        json.dumps({"method": "PUT", "body": {"x": "$images"}, "answers": "outputs.0.data"})
    )
    images = make_images(4)
    suspect = open_suspect(f"{server.url}/score", "template", template=str(path))
    assert isinstance(suspect, TemplateSuspect)
    with suspect:
        assert suspect.query(images) == labels_of(images)  # rows of scores, argmax'd
    assert server.seen[0].method == "PUT"


def test_template_shares_retries_and_auth(server: FakeServer, fake_time: FakeTime) -> None:
    server.respond = scripted(
        reply({"error": "busy"}, 503, **{"Retry-After": "1"}),
        then=lambda seen: reply({"labels": [1, 2]}),
    )
    policy = HttpPolicy(token="t0k")
    template = {"url": f"{server.url}/p", "answers": "labels"}
    suspect = TemplateSuspect(template, policy=policy, sleep=fake_time.sleep, clock=fake_time.clock)
    with suspect:
        assert suspect.query(make_images(2)) == [1, 2]
    assert fake_time.sleeps == [1.0] and suspect.retries_done == 1
    assert all(seen.headers["authorization"] == "Bearer t0k" for seen in server.seen)
    assert server.seen[0].json() == {"instances": make_images(2).tolist()}  # default body


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        ({"predictions": [{"label": 1}]}, "expected 2 answers, got 1"),
        ({"predictions": [{"label": 1}, {"class": 2}]}, "no 'predictions.1.label'"),
        ({"predictions": {"label": 1}}, "is not a list"),
        ({"predictions": [{"label": "cat"}, {"label": 1}]}, "answer 0 is 'cat'"),
        ({"predictions": [{"label": [0.5]}, {"label": 1}]}, "2 or more scores"),
        ({"predictions": [{"label": True}, {"label": 1}]}, "not an integer label"),
    ],
)
def test_template_invalid_answers(server: FakeServer, answer: object, message: str) -> None:
    server.respond = lambda seen: reply(answer)
    template = {"url": f"{server.url}/p", "answers": "predictions.*.label"}
    with TemplateSuspect(template) as suspect, pytest.raises(QueryError, match=message):
        suspect.query(make_images(2))


@pytest.mark.parametrize(
    ("template", "field_name"),
    [
        ({"body": {"x": "$images"}}, "url"),
        ({"url": "localhost/p"}, "url"),
        ({"url": "http://h/p", "method": "DELETE"}, "method"),
        ({"url": "http://h/p", "headers": {"X": 1}}, "headers"),
        ({"url": "http://h/p", "headers": {"X": "a\nb"}}, "headers"),
        ({"url": "http://h/p", "encoding": "jpeg"}, "encoding"),
        ({"url": "http://h/p", "body": {"x": 1}}, "body"),
        ({"url": "http://h/p", "body": {"$images": 1}}, "body"),
        ({"url": "http://h/p", "body": {"x": float("nan"), "y": "$images"}}, "body"),
        ({"url": "http://h/p", "answers": 3}, "answers"),
        ({"url": "http://h/p", "answers": "a..b"}, "answers"),
        ({"url": "http://h/p", "answer": "labels"}, "answer"),
    ],
)
def test_bad_templates_name_the_field(template: dict[str, Any], field_name: str) -> None:
    with pytest.raises(ConfigError, match=f"'{field_name}'"):
        TemplateSuspect(template)


def test_bad_template_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        TemplateSuspect(tmp_path / "missing.json")
    broken = tmp_path / "broken.json"
    broken.write_text('{"url": ')
    with pytest.raises(ConfigError, match="not valid JSON"):
        TemplateSuspect(broken)
    listed = tmp_path / "list.json"
    listed.write_text("[]")
    with pytest.raises(ConfigError, match="JSON object"):
        TemplateSuspect(listed)


def test_png_needs_1_3_or_4_channels(server: FakeServer) -> None:
    template = {"url": f"{server.url}/p", "encoding": "png_base64"}
    with TemplateSuspect(template) as suspect, pytest.raises(ConfigError, match="channels"):
        suspect.query(make_images(1, (2, 4, 4)))


# ---------------------------------------------------------------------------------------------
# Python adapters

ADAPTER_SOURCE = textwrap.dedent(
    """
    import numpy as np

    calls = []

    def predict(images):
        calls.append(images.shape)
        assert images.dtype == np.uint8
        return [int(v) % 10 for v in images.reshape(len(images), -1).sum(axis=1)]

    def scores(images):
        labels = predict(images)
        return np.eye(10)[labels]  # one-hot rows: an array of scores

    class Remote:
        def query(self, images):
            return predict(images)

    def make_remote():
        return Remote()

    remote = Remote()
    not_callable = 42

    def make_nothing():
        return 42

    class NeedsArgs:
        def __init__(self, url):
            self.url = url

    class NeedsToken:
        def __init__(self, token):
            self.token = token
    """
)


@pytest.fixture
def adapter_file(tmp_path: Path) -> Path:
    path = tmp_path / "my_adapter.py"
    path.write_text(ADAPTER_SOURCE)
    return path


@pytest.mark.parametrize("attr", ["predict", "scores", "Remote", "make_remote", "remote"])
def test_python_adapter_from_a_file(adapter_file: Path, attr: str) -> None:
    images = make_images(6, (3, 5, 5))
    suspect = open_suspect(f"{adapter_file}:{attr}", "python")
    assert isinstance(suspect, CallableSuspect)
    assert suspect.protocol == "python" and suspect.address == f"python:{adapter_file}:{attr}"
    assert suspect.query(images) == labels_of(images)
    assert (suspect.requests_sent, suspect.images_sent) == (1, 6)


def test_python_adapter_from_a_module(adapter_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(adapter_file.parent))
    fn = load_adapter("my_adapter:predict")
    images = make_images(3)
    assert CallableSuspect(fn).query(images) == labels_of(images)


def test_python_adapter_answers_are_validated() -> None:
    with pytest.raises(QueryError, match="expected 2 answers, got 1"):
        CallableSuspect(lambda images: [1]).query(make_images(2))
    nan, good = CallableSuspect(lambda images: [[0.1, float("nan")], [1.0, 0.0]]).query(
        make_images(2)
    )
    assert isinstance(nan, InvalidAnswer) and good == 0
    assert CallableSuspect(lambda images: np.array([3, 4])).query(make_images(2)) == [3, 4]
    with pytest.raises(RuntimeError, match="boom"):  # the verifier records it as an error
        CallableSuspect(lambda images: (_ for _ in ()).throw(RuntimeError("boom"))).query(
            make_images(1)
        )


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("no_colon_here", "must be 'package.module:attr'"),
        ("{dir}/missing.py:predict", "does not exist"),
        ("ownmark_no_such_module_xyz:predict", "cannot import adapter module"),
        ("{file}:nothing", "no attribute 'nothing'"),
        ("{file}:not_callable", "not a callable"),
        ("{file}:NeedsArgs", "needs the suspect's URL; pass --url"),
        ("{file}:NeedsToken", "without arguments other than url and options"),
        ("{file}:make_nothing", "returned a int"),
        ("{dir}/broken.py:predict", "failed to load: SyntaxError"),
        ("json:", "must be 'package.module:attr'"),
    ],
)
def test_load_adapter_errors(adapter_file: Path, spec: str, message: str) -> None:
    (adapter_file.parent / "broken.py").write_text("def predict(:\n")
    spec = spec.format(dir=adapter_file.parent, file=adapter_file)
    with pytest.raises(ConfigError, match=message) as info:
        load_adapter(spec)
    assert "\n" not in str(info.value)


def test_open_suspect_registry(server: FakeServer) -> None:
    with pytest.raises(ConfigError, match="choose one of: python, template, torchserve, v2"):
        open_suspect(server.url, "grpc")
    with pytest.raises(ConfigError, match="--template FILE"):
        open_suspect(server.url, "template")
    with pytest.raises(ConfigError, match="only to the v2 and torchserve protocols"):
        open_suspect("x.py:f", "python", model="net")
    server.respond = v2_model("topk")
    suspect = open_suspect(server.url, model="net", answer="topk", policy=HttpPolicy(retries=0))
    assert isinstance(suspect, V2Suspect) and isinstance(suspect, Suspect)
    images = make_images(2)
    assert suspect.query(images) == labels_of(images)
    suspect.close()


# ---------------------------------------------------------------------------------------------
# fuzzing the parsers: a list of the right length or a QueryError, never anything else

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4)
    ),
    max_leaves=20,
)
NAMES = st.sampled_from(
    ["label", "labels", "topk_labels", "topk_scores", "probabilities", "logits", "OUT"]
)
DATATYPES = st.sampled_from(["INT64", "INT32", "FP32", "FP16", "BYTES", "BOOL", "int64", "fp32"])
SCALARS = (
    st.integers(-3, 12)
    | st.floats(allow_nan=True)
    | st.booleans()
    | st.none()
    | st.text(max_size=2)
)
OUTPUT = st.fixed_dictionaries(
    {
        "name": NAMES | st.integers(),
        "datatype": DATATYPES,
        "shape": st.lists(st.integers(-1, 4), max_size=3),
        "data": st.lists(SCALARS | st.lists(SCALARS, max_size=4), max_size=12),
    }
)
ANSWER = st.fixed_dictionaries(
    {"outputs": st.lists(OUTPUT, max_size=3)}, optional={"id": JSON, "error": JSON}
)


def _check_answers(answers: list[int | InvalidAnswer], count: int) -> None:
    assert len(answers) == count
    assert all(type(a) is int or isinstance(a, InvalidAnswer) for a in answers)


@settings(max_examples=300, deadline=None)
@given(
    payload=JSON | ANSWER,
    count=st.integers(0, 4),
    answer=st.sampled_from(["auto", "label", "topk", "probabilities"]),
)
def test_fuzz_v2_parser(payload: object, count: int, answer: str) -> None:
    try:
        answers = parse_v2_response(payload, count, answer, request_id="r1")
    except QueryError as exc:
        assert "\n" not in str(exc)
        return
    _check_answers(answers, count)


@settings(max_examples=300, deadline=None)
@given(
    payload=JSON | st.lists(SCALARS | st.lists(SCALARS, max_size=4), max_size=4),
    count=st.integers(0, 4),
)
def test_fuzz_free_form_answers(payload: object, count: int) -> None:
    try:
        answers = normalize_answers(payload, count)
    except QueryError as exc:
        assert "\n" not in str(exc)
        return
    _check_answers(answers, count)


def test_errors_are_ownmark_errors() -> None:
    assert issubclass(QueryError, OwnmarkError)


# ---------------------------------------------------------------------------------------------
# deployments reached with options: encodings, label names, request sizes, what was sent


def test_input_encoding_scales_normalises_and_lays_out() -> None:
    images = make_images(2, (3, 4, 5))
    batch = images.numpy()
    unit = InputEncoding(datatype="FP32", scale="unit").encode(batch)
    assert unit.dtype == np.float32 and unit.shape == (2, 3, 4, 5)
    np.testing.assert_array_equal(unit, batch.astype(np.float32) / np.float32(255))
    normed = InputEncoding(
        datatype="FP16", scale="unit", mean=(0.5, 0.4, 0.3), std=(0.2, 0.2, 0.1), layout="NHWC"
    ).encode(batch)
    assert normed.dtype == np.float16 and normed.shape == (2, 4, 5, 3)
    expected = (batch[:, 2].astype(np.float32) / np.float32(255) - np.float32(0.3)) / np.float32(
        0.1
    )
    np.testing.assert_array_equal(normed[..., 2], expected.astype(np.float16))
    flat = InputEncoding(shape=(60,)).encode(batch)
    assert flat.dtype == np.uint8 and flat.shape == (2, 60)
    assert InputEncoding.from_dict(InputEncoding(datatype="FP32", shape=(60,)).to_dict()) == (
        InputEncoding(datatype="FP32", shape=(60,))
    )


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"datatype": "INT8"}, "UINT8, FP32, FP16"),
        ({"scale": "half"}, "none, unit"),
        ({"layout": "CHW"}, "NCHW, NHWC"),
        ({"datatype": "UINT8", "scale": "unit"}, "--input-datatype FP32"),
        ({"datatype": "FP32", "mean": (0.5,)}, "--mean has 1 values but --std has 0"),
        ({"datatype": "FP32", "mean": (0.5,), "std": (0.0,)}, "positive"),
        ({"shape": (1, 0, 28)}, "--input-shape"),
    ],
)
def test_input_encoding_validation(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)) as info:
        InputEncoding(**fields)
    assert "\n" not in str(info.value)


def test_input_shape_must_hold_the_images() -> None:
    with pytest.raises(ConfigError, match="--input-shape 1,28,28"):
        InputEncoding(shape=(1, 28, 27)).image_shape((1, 28, 28))
    with pytest.raises(ConfigError, match="give 1 or 3"):
        InputEncoding(datatype="FP32", mean=(1.0, 2.0), std=(1.0, 1.0)).image_shape((3, 4, 4))


@pytest.mark.parametrize("channels", [1, 3, 4])
def test_png_bytes_decode_to_the_pixels(channels: int) -> None:
    image = make_images(1, (channels, 9, 7))[0].numpy()
    decoded = np.array(Image.open(io.BytesIO(png_bytes(image))))
    if channels == 1:
        decoded = decoded[:, :, None]
    np.testing.assert_array_equal(decoded, image.transpose(1, 2, 0))
    assert png_bytes(image) == png_bytes(image.copy())  # the same pixels, the same bytes


def test_read_labels(tmp_path: Path) -> None:
    text = tmp_path / "labels.txt"
    text.write_text("cat\ndog\nbird\n\n")
    assert read_labels(text) == ("cat", "dog", "bird")
    index = tmp_path / "index_to_name.json"
    index.write_text(json.dumps({"1": ["n02", "dog"], "0": ["n01", "cat"]}))
    assert read_labels(index) == ("cat", "dog")
    for content, message in [
        ("cat\n\ndog\n", "class 1 has no name"),
        ("cat\ncat\n", "names classes 0 and 1"),
        ("cat\n", "1 classes"),
    ]:
        text.write_text(content)
        with pytest.raises(ConfigError, match=message):
            read_labels(text)
    index.write_text(json.dumps({"0": "cat", "2": "dog"}))
    with pytest.raises(ConfigError, match=r"indices 0\.\.1"):
        read_labels(index)
    with pytest.raises(ConfigError, match="does not exist"):
        read_labels(tmp_path / "missing.txt")


def test_v2_encodes_as_told_and_splits_requests(server: FakeServer) -> None:
    def respond(seen: Seen) -> Reply:
        if seen.method == "GET":
            return reply({"name": "net", "inputs": []})  # MLServer's default metadata
        tensor = seen.json()["inputs"][0]
        assert tensor["name"] == "input-0" and tensor["datatype"] == "FP32"
        pixels = np.rint(np.array(tensor["data"]) * 255).reshape(tensor["shape"])
        return reply({"id": seen.json()["id"], "outputs": [
            {"name": "output-0", "datatype": "FP32", "shape": [len(pixels), 10],
             "data": one_hot_rows(labels_of(pixels))},
            {"name": "other", "datatype": "FP32", "shape": [len(pixels), 10],
             "data": one_hot_rows([0] * len(pixels))},
        ]})  # fmt: skip

    server.respond = respond
    encoding = InputEncoding(datatype="FP32", scale="unit", layout="NHWC", shape=(784,))
    wire = WireFormat(encoding=encoding, input_name="input-0", output_name="output-0", max_batch=3)
    images = make_images(7)
    with V2Suspect(server.url, "net", wire=wire) as suspect:
        with pytest.raises(ConfigError, match="--input-shape 28,27,1"):
            suspect.check_input((1, 28, 27))  # the stated shape must hold the images
        suspect.check_input((1, 28, 28))  # metadata lists no inputs: the stated shape is used
        assert suspect.query(images) == labels_of(images)
        sent = suspect.take_sent()
        assert suspect.take_sent() == []
        assert suspect.options()["encoding"]["shape"] == [784]
    posts = [seen for seen in server.seen if seen.method == "POST"]
    assert [seen.json()["inputs"][0]["shape"] for seen in posts] == [[3, 784], [3, 784], [1, 784]]
    # What was recorded is what went out, and is rebuilt from the images and the options.
    assert [s.sha256 for s in sent] == [hashlib.sha256(seen.body).hexdigest() for seen in posts]
    assert [s.id for s in sent] == [seen.json()["id"] for seen in posts]
    rebuilt = request_bodies("v2", suspect.options(), images.numpy(), [s.id for s in sent])
    assert rebuilt == [seen.body for seen in posts]


@pytest.mark.parametrize(
    ("declared", "message"),
    [
        ([], "lists no inputs; state the input shape, e.g. --input-shape 1,28,28"),
        ([{"name": "images", "datatype": "FP32", "shape": [-1, 1, 28, 28]}],
         "pass --input-datatype FP32 (and --scale unit"),
        ([{"name": "input-0", "datatype": "UINT8", "shape": [-1, 1, 28, 28]}],
         "pass --input-name NAME"),
    ],
)  # fmt: skip
def test_v2_metadata_problems_say_which_option(
    server: FakeServer, declared: list[Any], message: str
) -> None:
    server.respond = lambda seen: reply({**METADATA, "inputs": declared})
    with V2Suspect(server.url, "net") as suspect, pytest.raises(ConfigError) as info:
        suspect.check_input((1, 28, 28))
    assert message in str(info.value) and "serve a model" not in str(info.value)


def test_v2_named_output_must_exist(server: FakeServer) -> None:
    server.respond = v2_model("label")
    wire = WireFormat(output_name="scores")
    with V2Suspect(server.url, "net", wire=wire) as suspect:
        with pytest.raises(QueryError, match="no output named 'scores'"):
            suspect.query(make_images(2))
        assert suspect.counters.errors == 1


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b'{"cat": 0.7, "dog": 0.2, "bird": 0.1}', 0),
        (b'{"bird": 0.3, "dog": 0.6}', 1),
        (b'{"dog": 0.99}', 1),
        (b"bird", 2),
        (b'"dog"', 1),
        (b"2", 2),
        (b'["bird"]', 2),
        (b'{"cat": 0.4, "dog": 0.4}', "tied"),
        (b'{"cat": NaN, "dog": 0.4}', "non-finite"),
        (b'{"wolf": 0.9, "dog": 0.1}', "not a known label"),
        (b"wolf", "not a known label"),
    ],
)
def test_torchserve_answers(body: bytes, expected: int | str) -> None:
    labels = {"cat": 0, "dog": 1, "bird": 2}
    answer = parse_torchserve_answer(body, labels)
    if isinstance(expected, int):
        assert answer == expected
    else:
        assert isinstance(answer, InvalidAnswer) and expected in answer.reason


@pytest.mark.parametrize("body", [b"", b"[1, 2]", b'{"cat": "high"}', b"{}"])
def test_torchserve_malformed_answers(body: bytes) -> None:
    with pytest.raises(QueryError):
        parse_torchserve_answer(body, {"cat": 0, "dog": 1})


def test_torchserve_without_labels_understands_only_indices() -> None:
    assert parse_torchserve_answer(b'{"3": 0.9, "4": 0.1}', None) == 3
    answer = parse_torchserve_answer(b"cat", None)
    assert isinstance(answer, InvalidAnswer) and "--labels" in answer.reason


def test_torchserve_sends_one_png_per_image(server: FakeServer) -> None:
    def respond(seen: Seen) -> Reply:
        pixels = np.array(Image.open(io.BytesIO(seen.body)))
        assert seen.headers["content-type"] == "image/png"
        return (
            200,
            {"Content-Type": "text/plain"},
            ["zero", "one", "two"][int(pixels.sum()) % 3].encode(),
        )

    server.respond = respond
    images = make_images(3, (1, 5, 5))
    wire = WireFormat(labels=("zero", "one", "two"))
    with open_suspect(f"{server.url}/predictions/net/2.0", "torchserve", wire=wire) as suspect:
        assert suspect.address == f"{server.url}/predictions/net/2.0"
        assert suspect.query(images) == [int(i.sum()) % 3 for i in images.numpy().astype(np.int64)]
        sent = suspect.take_sent()
    assert [seen.path for seen in server.seen] == ["/predictions/net/2.0"] * 3
    assert [s.sha256 for s in sent] == [
        hashlib.sha256(seen.body).hexdigest() for seen in server.seen
    ]
    with pytest.raises(ConfigError, match="--scale"):
        TorchServeSuspect(
            server.url, "net", wire=WireFormat(encoding=InputEncoding(datatype="FP32"))
        )
    with pytest.raises(ConfigError, match="--model-name NAME"):
        TorchServeSuspect(server.url)


def test_template_batch_placeholder_scaling_and_label_names(server: FakeServer) -> None:
    def respond(seen: Seen) -> Reply:
        request = seen.json()["inputs"][0]
        pixels = np.rint(np.array(request["data"]) * 255).reshape(request["shape"])
        assert request["shape"][0] == len(pixels) <= 2
        return reply({"outputs": [{"data": [f"c{label}" for label in labels_of(pixels)]}]})

    server.respond = respond
    template = {
        "url": f"{server.url}/v2/models/m/infer",
        "body": {
            "inputs": [{"name": "input-0", "shape": ["$batch", 1, 28, 28], "data": "$images"}]
        },
        "encoding": "flat",
        "answers": "outputs.0.data",
        "max_batch": 2,
    }
    wire = WireFormat(
        encoding=InputEncoding(datatype="FP32", scale="unit"),
        labels=tuple(f"c{i}" for i in range(10)),
    )
    images = make_images(5)
    with TemplateSuspect(template, wire=wire) as suspect:
        assert suspect.query(images) == labels_of(images)
        sent = suspect.take_sent()
        options = suspect.options()
    assert len(server.seen) == 3 and options["template"]["max_batch"] == 2
    rebuilt = request_bodies("template", options, images.numpy(), [None] * 3)
    assert rebuilt == [s.body for s in server.seen]
    assert [s.sha256 for s in sent] == [hashlib.sha256(s.body).hexdigest() for s in server.seen]
    # An unknown label name is an invalid answer for that image, never a match.
    server.respond = lambda seen: reply({"outputs": [{"data": ["c1", "wolf"]}]})
    with TemplateSuspect({**template, "max_batch": None}, wire=wire) as suspect:
        first, second = suspect.query(make_images(2))
    assert first == 1 and isinstance(second, InvalidAnswer)


def test_template_records_header_names_not_values(server: FakeServer) -> None:
    template = {"url": f"{server.url}/p", "headers": {"X-Api-Key": "secret"}, "answers": "l"}
    with TemplateSuspect(template) as suspect:
        recorded = json.dumps(suspect.options())
    assert "X-Api-Key" in recorded and "secret" not in recorded


def test_python_adapter_gets_the_url_and_options(tmp_path: Path) -> None:
    source = tmp_path / "remote_adapter.py"
    source.write_text(
        textwrap.dedent(
            """
            class Remote:
                def __init__(self, url, options):
                    self.url, self.options = url, options

                def query(self, images):
                    assert self.options.encoding.datatype == "FP32"
                    return ["seven" for _ in images]
            """
        )
    )
    wire = WireFormat(
        encoding=InputEncoding(datatype="FP32", scale="unit"), labels=(*"abcdefg", "seven")
    )
    url, spec = "https://api.example/v1/predict", f"{source}:Remote"
    suspect = open_suspect(url, "python", adapter=spec, wire=wire)
    assert suspect.address == "https://api.example/v1/predict"
    assert suspect.options()["adapter"] == f"{source}:Remote"
    assert suspect.query(make_images(2)) == [7, 7]
    assert suspect.counters.requests_sent == 1 and suspect.take_sent() == []


def test_every_opened_suspect_is_a_complete_suspect(server: FakeServer, adapter_file: Path) -> None:
    opened = [
        open_suspect(server.url, "v2", model="net"),
        open_suspect(f"{server.url}/predictions/net", "torchserve"),
        open_suspect(f"{server.url}/p", "template", template=_template_file()),
        open_suspect("http://x/y", "python", adapter=f"{adapter_file}:predict"),
    ]
    for suspect in opened:
        assert isinstance(suspect, Suspect), type(suspect)
        assert suspect.counters == SuspectCounters()
        json.dumps(suspect.options())
        suspect.close()


def _template_file() -> str:
    path = Path(tempfile.mkdtemp()) / "t.json"
    path.write_text(json.dumps({"answers": "labels"}))
    return str(path)
