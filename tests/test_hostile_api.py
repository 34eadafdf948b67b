"""A broken or hostile prediction API can neither get a match nor stall or exhaust the verifier.

Every test starts a real misbehaving HTTP server on 127.0.0.1 (a thread in this process) and
queries it through the real client stack (httpx, sockets). The servers never hold what they
send in memory: a "1 GB" answer is generated chunk by chunk until the client hangs up, and
the server counts the bytes it managed to send. What must hold for every misbehaviour: the
suspect's ``query`` returns an ``InvalidAnswer`` for the image or raises ``QueryError``
(both recorded by the verifier as failed queries), within its budget, without reading more
than the policy allows; and ``verify_ownership`` never says "owned".

Time bounds in these tests are generous upper bounds that only prove a limit is enforced
(a 3 s deadline ends in well under 20 s, not at the server's pace of hours).
"""

from __future__ import annotations

import contextlib
import gzip
import json
import re
import socket
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
import torch

from ownmark.data import DataSplits
from ownmark.keys import KeySet
from ownmark.verify import Verdict, verify_ownership
from ownmark.verify.protocols import (
    CallableSuspect,
    HttpPolicy,
    QueryError,
    TemplateSuspect,
    V2Suspect,
)
from ownmark.verify.suspects import InvalidAnswer
from ownmark.workflows import make_key

MIB = 2**20


# ---------------------------------------------------------------------------------------------
# a server that misbehaves as scripted


class Hostile:
    """A threaded HTTP server on ``host`` whose every request runs ``behaviour(self, handler)``.

    ``requests`` counts the requests it received and ``sent`` the bytes it wrote (what the
    client could at most have read). ``stop`` is set at exit, so trickling handlers end.
    """

    def __init__(
        self, behaviour: Callable[[Hostile, Handler], None], host: str = "127.0.0.1"
    ) -> None:
        self.behaviour = behaviour
        self.requests = 0
        self.sent = 0
        self.stop = threading.Event()
        self._lock = threading.Lock()
        self.server = ThreadingHTTPServer((host, 0), Handler)
        self.server.hostile = self  # type: ignore[attr-defined]
        self.host = host
        self.port = int(self.server.server_address[1])
        self.url = f"http://{host}:{self.port}"

    def send(self, handler: Handler, data: bytes) -> None:
        handler.wfile.write(data)
        with self._lock:
            self.sent += len(data)

    def __enter__(self) -> Hostile:
        thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.server.shutdown()
        self.server.server_close()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _handle(self) -> None:
        hostile: Hostile = self.server.hostile  # type: ignore[attr-defined]
        length = int(self.headers.get("Content-Length", "0"))
        self.body = self.rfile.read(length)
        with hostile._lock:
            hostile.requests += 1
        self.close_connection = True
        with contextlib.suppress(OSError):  # the client hung up: that is the point
            hostile.behaviour(hostile, self)

    do_GET = do_POST = _handle

    def images(self) -> int:
        """How many images the request carried (v2 body, or a template's "instances")."""
        request = json.loads(self.body)
        if "inputs" in request:
            return int(request["inputs"][0]["shape"][0])
        return len(request["instances"])

    def log_message(self, format: str, *args: Any) -> None:
        pass


def answer(
    hostile: Hostile, handler: Handler, text: str, status: int = 200, **headers: str
) -> None:
    """Send ``text`` (raw JSON, so it may hold NaN or Infinity) as a complete answer."""
    body = text.encode()
    head = f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\n"
    head += "".join(f"{name.replace('_', '-')}: {value}\r\n" for name, value in headers.items())
    head += f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    hostile.send(handler, head.encode() + body)


def probabilities(rows: list[str]) -> str:
    """A v2 probabilities answer whose rows are raw JSON text, e.g. "0.1, NaN"."""
    width = len(rows[0].split(","))
    data = ", ".join(rows)
    output = f'"name": "probabilities", "datatype": "FP32", "shape": [{len(rows)}, {width}]'
    return f'{{"outputs": [{{{output}, "data": [{data}]}}]}}'


def one_hot(label: int, classes: int = 10) -> str:
    return ", ".join("0.9" if c == label else "0.01" for c in range(classes))


def images(n: int = 4) -> torch.Tensor:
    return torch.randint(0, 256, (n, 1, 28, 28), dtype=torch.uint8, generator=torch.Generator())


@contextlib.contextmanager
def elapsed() -> Iterator[list[float]]:
    """Wall seconds spent in the block, in ``[0]`` once it is left."""
    box = [0.0]
    start = time.monotonic()
    try:
        yield box
    finally:
        box[0] = time.monotonic() - start


# ---------------------------------------------------------------------------------------------
# scores that name no class are invalid for that image only


ROWS = {
    "valid": (one_hot(3), 3),
    "nan": ("0.5, NaN, " + ", ".join(["0.01"] * 8), None),
    "infinity": ("Infinity, " + ", ".join(["0.01"] * 9), None),
    "minus_infinity": ("0.5, -Infinity, " + ", ".join(["0.01"] * 8), None),
    "overflow": ("1e999, " + ", ".join(["0.01"] * 9), None),  # parses as inf
    "huge_integer": ("1" + "0" * 400 + ", " + ", ".join(["2"] * 9), None),  # no float holds it
    "tied": ("0.45, 0.45, " + ", ".join(["0.0125"] * 8), None),
    "uniform": (", ".join(["0.1"] * 10), None),
    "constant": (", ".join(["0.0"] * 10), None),
}


@pytest.mark.parametrize("answer_kind", ["auto", "probabilities"])
def test_v2_probability_rows_that_name_no_class_are_invalid_alone(answer_kind: str) -> None:
    names = list(ROWS)

    def behaviour(hostile: Hostile, handler: Handler) -> None:
        answer(hostile, handler, probabilities([ROWS[name][0] for name in names]))

    with Hostile(behaviour) as api, V2Suspect(api.url, "net", answer=answer_kind) as suspect:
        got = suspect.query(images(len(names)))
    for name, value in zip(names, got, strict=True):
        expected = ROWS[name][1]
        if expected is None:
            assert isinstance(value, InvalidAnswer), (name, value)
        else:
            assert value == expected, name
    reasons = {name: v.reason for name, v in zip(names, got, strict=True) if not isinstance(v, int)}
    assert "non-finite" in reasons["nan"] and "non-finite" in reasons["overflow"]
    assert "tied" in reasons["uniform"] and "tied" in reasons["tied"]


def test_label_answers_stay_labels_even_when_constant() -> None:
    """A label is taken as it is: an API that answers 0 for everything answers 0."""

    def behaviour(hostile: Hostile, handler: Handler) -> None:
        n = handler.images()
        output = {"name": "label", "datatype": "INT64", "shape": [n], "data": [0] * n}
        answer(hostile, handler, json.dumps({"outputs": [output]}))

    with Hostile(behaviour) as api, V2Suspect(api.url, "net") as suspect:
        assert suspect.query(images(5)) == [0] * 5


def _topk_answer(n: int, scores: list[str], extra: list[dict[str, Any]] | None = None) -> str:
    labels = {"name": "topk_labels", "datatype": "INT64", "shape": [n, 2], "data": [4, 7] * n}
    rows = ", ".join(scores)
    topk_scores = (
        f'{{"name": "topk_scores", "datatype": "FP32", "shape": [{n}, 2], "data": [{rows}]}}'
    )
    outputs = [json.dumps(labels), topk_scores, *(json.dumps(o) for o in extra or [])]
    return f'{{"outputs": [{", ".join(outputs)}]}}'


@pytest.mark.parametrize(
    ("scores", "valid"),
    [
        (["0.6, 0.3", "0.5, 0.5", "NaN, 0.1", "0.2, 0.7"], [True, False, False, False]),
        (["0.6, 0.3", "Infinity, 0.3", "0.4, 0.4", "0.9, 0.05"], [True, False, False, True]),
    ],
)
@pytest.mark.parametrize("answer_kind", ["topk", "auto"])
def test_v2_topk_whose_first_scores_tie_is_invalid(
    scores: list[str], valid: list[bool], answer_kind: str
) -> None:
    def behaviour(hostile: Hostile, handler: Handler) -> None:
        answer(hostile, handler, _topk_answer(4, scores))

    with Hostile(behaviour) as api, V2Suspect(api.url, "net", answer=answer_kind) as suspect:
        got = suspect.query(images(4))
    assert [not isinstance(v, InvalidAnswer) for v in got] == valid
    assert all(v == 4 for v, ok in zip(got, valid, strict=True) if ok)


def test_v2_label_beside_tied_or_contrary_scores_is_invalid() -> None:
    """The label a server breaks a tie with is not taken; nor one its own scores contradict."""
    rows = [one_hot(2), ", ".join(["0.1"] * 10), one_hot(5), "NaN" + ", 0.0" * 9]
    labels = [2, 0, 1, 0]

    def behaviour(hostile: Hostile, handler: Handler) -> None:
        label = {"name": "label", "datatype": "INT64", "shape": [4], "data": labels}
        text = probabilities(rows).replace(
            '{"outputs": [', '{"outputs": [' + json.dumps(label) + ", "
        )
        answer(hostile, handler, text)

    with Hostile(behaviour) as api, V2Suspect(api.url, "net", answer="label") as suspect:
        got = suspect.query(images(4))
    assert got[0] == 2
    assert [type(v) for v in got[1:]] == [InvalidAnswer] * 3
    assert "disagree" in got[2].reason  # type: ignore[union-attr]


def test_template_and_python_adapters_get_the_same_screening() -> None:
    def behaviour(hostile: Hostile, handler: Handler) -> None:
        answer(
            hostile, handler, '{"predictions": [[0.2, 0.8], [0.5, 0.5], [NaN, 1.0], [1e400, 0]]}'
        )

    with Hostile(behaviour) as api, TemplateSuspect({"url": api.url + "/p"}) as suspect:
        got = suspect.query(images(4))
    assert got[0] == 1 and all(isinstance(v, InvalidAnswer) for v in got[1:])

    adapter = CallableSuspect(
        lambda batch: [[1.0, 1.0, 0.0], [0.0, 3.0, 1.0], [float("inf"), 0, 0]]
    )
    tie, good, inf = adapter.query(images(3))
    assert isinstance(tie, InvalidAnswer) and good == 1 and isinstance(inf, InvalidAnswer)


# ---------------------------------------------------------------------------------------------
# answers too large: streamed, capped, never held


def _endless(hostile: Hostile, handler: Handler, *, declare: bool) -> None:
    """A "1 GB" answer, made chunk by chunk while the client reads (never held here)."""
    chunk = b"0," * 32768  # 64 KiB
    total = 2**30
    head = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
    head += f"Content-Length: {total}\r\n" if declare else "Transfer-Encoding: chunked\r\n"
    hostile.send(handler, (head + "\r\n").encode())
    written = 0
    while written < total and not hostile.stop.is_set():
        piece = chunk if declare else b"%x\r\n%s\r\n" % (len(chunk), chunk)
        hostile.send(handler, piece)
        written += len(chunk)


@pytest.mark.parametrize("declare", [False, True], ids=["chunked", "content-length"])
def test_a_1_gb_answer_is_cut_at_the_cap_without_holding_it(declare: bool) -> None:
    policy = HttpPolicy()  # default cap, 8 MiB
    with Hostile(lambda h, r: _endless(h, r, declare=declare)) as api:
        suspect = V2Suspect(api.url, "net", policy=policy)
        tracemalloc.start()
        try:
            with elapsed() as took, suspect, pytest.raises(QueryError) as info:
                suspect.query(images(2))
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        time.sleep(0.2)  # the server notices the hang-up
    assert "larger than 8 MiB" in str(info.value) and "\n" not in str(info.value)
    assert suspect.requests_sent == 1  # not retried: it would be as large again
    assert took[0] < 20
    # What the client held at once: about the cap, far from 1 GB.
    assert peak < 3 * policy.max_response_bytes, peak
    # What the server got out before the client hung up (the cap plus socket buffers).
    assert api.sent < 64 * MIB, api.sent


def test_a_compressed_answer_cannot_expand_past_the_cap() -> None:
    """A 64 MiB answer gzipped to ~100 KiB: decompressed in bounded steps, cut at the cap."""
    raw = gzip.compress(b'{"outputs": [' + b"0," * (32 * MIB), compresslevel=9)
    assert len(raw) < MIB

    def behaviour(hostile: Hostile, handler: Handler) -> None:
        head = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Encoding: gzip\r\n"
        hostile.send(handler, f"{head}Content-Length: {len(raw)}\r\n\r\n".encode() + raw)

    policy = HttpPolicy(max_response_bytes=2 * MIB)
    with Hostile(behaviour) as api, V2Suspect(api.url, "net", policy=policy) as suspect:
        tracemalloc.start()
        try:
            with pytest.raises(QueryError, match="larger than 2 MiB"):
                suspect.query(images(2))
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert peak < 8 * MIB, peak


def test_a_small_gzipped_answer_is_read() -> None:
    text = probabilities([one_hot(6), one_hot(1)]).encode()

    def behaviour(hostile: Hostile, handler: Handler) -> None:
        raw = gzip.compress(text)
        head = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Encoding: gzip\r\n"
        hostile.send(handler, f"{head}Content-Length: {len(raw)}\r\n\r\n".encode() + raw)

    with Hostile(behaviour) as api, V2Suspect(api.url, "net") as suspect:
        assert suspect.query(images(2)) == [6, 1]
        assert api.requests == 1


# ---------------------------------------------------------------------------------------------
# time: a deadline per request, a budget per run, Retry-After capped


def _trickle(hostile: Hostile, handler: Handler, *, headers: bool) -> None:
    """One byte every 2 s: in the headers, or in the body after complete headers."""
    body = probabilities([one_hot(1)] * handler.images()).encode()
    head = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
    head += f"Content-Length: {len(body)}\r\n\r\n"
    if headers:
        data = head.encode() + body
    else:
        hostile.send(handler, head.encode())
        data = body
    for i in range(len(data)):
        hostile.send(handler, data[i : i + 1])
        if hostile.stop.wait(2.0):
            return


@pytest.mark.parametrize("in_headers", [False, True], ids=["body", "headers"])
def test_a_trickling_server_fails_at_the_deadline(in_headers: bool) -> None:
    # Every byte comes well within the 10 s timeout: only the deadline can end this.
    policy = HttpPolicy(timeout=10.0, deadline=3.0, retries=0)
    with (
        Hostile(lambda h, r: _trickle(h, r, headers=in_headers)) as api,
        V2Suspect(api.url, "net", policy=policy) as suspect,
        elapsed() as took,
        pytest.raises(QueryError) as info,
    ):
        suspect.query(images(2))
    assert "3 s deadline" in str(info.value) and "--deadline" in str(info.value)
    assert took[0] < 20  # the answer would have taken ~20 minutes


def test_the_time_budget_bounds_retries_and_then_refuses_at_once() -> None:
    policy = HttpPolicy(deadline=3.0, retries=10, backoff=0.1, total_seconds=5.0)
    with (
        Hostile(lambda h, r: _trickle(h, r, headers=False)) as api,
        V2Suspect(api.url, "net", policy=policy) as suspect,
    ):
        with elapsed() as took, pytest.raises(QueryError) as info:
            suspect.query(images(2))
        assert "time budget exhausted" in str(info.value)
        assert took[0] < 20  # 11 attempts of 3 s each would take 33 s
        sent = api.requests
        with elapsed() as again, pytest.raises(QueryError, match="time budget exhausted"):
            suspect.query(images(2))
        assert again[0] < 2.5 and api.requests == sent  # nothing more was sent


@pytest.mark.parametrize("status", [429, 503])
def test_retry_after_3600_fails_now(status: int) -> None:
    def behaviour(hostile: Hostile, handler: Handler) -> None:
        answer(hostile, handler, '{"error": "come back in an hour"}', status, Retry_After="3600")

    with (
        Hostile(behaviour) as api,
        V2Suspect(api.url, "net") as suspect,  # default policy: at most 30 s
        elapsed() as took,
        pytest.raises(QueryError) as info,
    ):
        suspect.query(images(1))
    assert "3600 s" in str(info.value) and "30 s allowed" in str(info.value)
    assert took[0] < 20 and api.requests == 1


def test_a_retry_after_past_the_budget_fails_now() -> None:
    def behaviour(hostile: Hostile, handler: Handler) -> None:
        answer(hostile, handler, '{"error": "busy"}', 503, Retry_After="25")

    policy = HttpPolicy(total_seconds=5.0)
    with (
        Hostile(behaviour) as api,
        V2Suspect(api.url, "net", policy=policy) as suspect,
        elapsed() as took,
        pytest.raises(QueryError, match="time budget exhausted"),
    ):
        suspect.query(images(1))
    assert took[0] < 15 and api.requests == 1  # it did not sleep the 25 s


# ---------------------------------------------------------------------------------------------
# redirects


def _free_loopback(host: str) -> bool:
    try:
        with socket.socket() as probe:
            probe.bind((host, 0))
    except OSError:
        return False
    return True


@pytest.mark.parametrize("where", ["other port", "other host", "other scheme"])
def test_a_redirect_to_another_server_is_never_followed(where: str) -> None:
    if where == "other host" and not _free_loopback("127.0.0.2"):
        pytest.skip("127.0.0.2 is not a loopback address here")
    host = "127.0.0.2" if where == "other host" else "127.0.0.1"

    def elsewhere(hostile: Hostile, handler: Handler) -> None:
        answer(hostile, handler, probabilities([one_hot(0)] * handler.images()))

    with Hostile(elsewhere, host) as target:
        location = f"{target.url}/v2/models/net/infer"
        if where == "other scheme":
            location = f"https://127.0.0.1:{target.port}/v2/models/net/infer"

        def behaviour(hostile: Hostile, handler: Handler) -> None:
            answer(hostile, handler, "{}", 307, Location=location)

        with (
            Hostile(behaviour) as api,
            V2Suspect(api.url, "net") as suspect,
            pytest.raises(QueryError) as info,
        ):
            suspect.query(images(2))
    message = str(info.value)
    assert "HTTP 307" in message and "another server" in message and "never follows" in message
    assert target.requests == 0 and api.requests == 1  # not followed, not retried


def test_a_same_origin_redirect_is_not_followed_either() -> None:
    """Documented choice: the evidence names the address queried, so no redirect is followed."""

    def behaviour(hostile: Hostile, handler: Handler) -> None:
        if handler.path.endswith("/net/infer"):
            answer(hostile, handler, "{}", 308, Location="/v2/models/other/infer")
        else:
            answer(hostile, handler, probabilities([one_hot(0)] * handler.images()))

    # Even a client that would follow redirects on its own is not allowed to.
    client = httpx.Client(follow_redirects=True)
    with (
        Hostile(behaviour) as api,
        client,
        V2Suspect(api.url, "net", client=client) as suspect,
        pytest.raises(QueryError) as info,
    ):
        suspect.query(images(2))
    assert re.search(r"redirects to http://127\.0\.0\.1:\d+/v2/models/other/infer", str(info.value))
    assert api.requests == 1


# ---------------------------------------------------------------------------------------------
# the verifier, end to end: never "owned"


@pytest.fixture(scope="module")
def key(digits: DataSplits) -> KeySet:
    return make_key(digits, "content", seed=0)


def _v2_rows(row: Callable[[int], str]) -> Callable[[Hostile, Handler], None]:
    def behaviour(hostile: Hostile, handler: Handler) -> None:
        n = handler.images()
        answer(hostile, handler, probabilities([row(i) for i in range(n)]))

    return behaviour


def _constant_label(label: int) -> Callable[[Hostile, Handler], None]:
    def behaviour(hostile: Hostile, handler: Handler) -> None:
        n = handler.images()
        output = {"name": "label", "datatype": "INT64", "shape": [n], "data": [label] * n}
        answer(hostile, handler, json.dumps({"outputs": [output]}))

    return behaviour


@pytest.mark.parametrize(
    "behaviour",
    [
        pytest.param(_v2_rows(lambda i: ", ".join(["0.1"] * 10)), id="uniform"),
        pytest.param(_v2_rows(lambda i: "NaN" + ", 0.0" * 9), id="nan"),
        pytest.param(_constant_label(0), id="constant-label"),
    ],
)
def test_verify_ownership_against_a_hostile_api_is_never_owned(
    key: KeySet, behaviour: Callable[[Hostile, Handler], None]
) -> None:
    policy = HttpPolicy(retries=0, total_seconds=60.0)
    with Hostile(behaviour) as api, V2Suspect(api.url, "net", policy=policy) as suspect:
        result = verify_ownership(key, suspect)
    assert result.verdict is not Verdict.OWNED
    assert result.matches <= result.queries // 2
    assert api.requests >= 1
