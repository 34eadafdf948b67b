"""Remote verification end to end: a real server on 127.0.0.1, the real CLI, real models.

``ownmark serve`` in one process and ``ownmark verify --url`` in another, as two terminals
would run them; then every way a suspect API can misbehave, each of which must end in the
right verdict or a clear error, and never in "owned".
"""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch

from ownmark.cli import main
from ownmark.data import DataSplits
from ownmark.keys import save_key
from ownmark.metrics import accuracy, predict
from ownmark.models import Classifier, save_model
from ownmark.schemes import create_scheme
from ownmark.train import TrainConfig
from ownmark.verify.evidence import check_evidence, load_evidence
from ownmark.workflows import train_model


@pytest.fixture(scope="module")
def world(small_digits: DataSplits, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A noise key, a model with it embedded and an independent clean model, on disk."""
    folder = tmp_path_factory.mktemp("remote")
    # The paper's one-label key (digit 1 -> 0), quick to embed; a stand-in p0 for this small
    # test key (calibration is tested elsewhere), so that a 40-query budget can decide.
    scheme = create_scheme("noise", num_keys=40, num_decoys=60, source_class=1, target_class=0)
    key = scheme.generate(small_digits, seed=0).with_p0(0.05, "test stand-in")
    marked, result = train_model(
        small_digits, TrainConfig(epochs=6, seed=1, key_ratio=0.2), key=key, progress=False
    )
    assert result.watermark_accuracy is not None and result.watermark_accuracy >= 0.95
    clean, _ = train_model(small_digits, TrainConfig(epochs=3, seed=2), progress=False)
    assert accuracy(clean, key.images, key.labels) <= 0.2
    paths = {"key_file": folder / "k.key", "marked_file": folder / "m.safetensors"}
    save_key(key, paths["key_file"])
    save_model(marked, paths["marked_file"])
    save_model(clean, folder / "c.safetensors")
    return {"key": key, "marked": marked, "clean": clean, "dir": folder, **paths}


def _verify(world: dict[str, Any], url: str, tmp_path: Path, *extra: str) -> int:
    argv = ["-q", "verify", "--key", str(world["key_file"]), "--url", url]
    argv += ["--max-queries", "40", "--evidence", str(tmp_path / "ev.json")]
    return main([*argv, *extra])


# ------------------------------------------------------------------- two terminals


def _start(*args: str | Path) -> tuple[subprocess.Popen[str], str]:
    """``ownmark serve ... --port 0`` in its own process; returns it and its infer URL."""
    command = [sys.executable, "-m", "ownmark.cli", "serve", *map(str, args), "--port", "0"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert process.stdout is not None
    line = process.stdout.readline()
    found = re.search(r"(http://\S+/infer)", line)
    if found is None:
        process.kill()
        raise AssertionError(f"no URL from ownmark serve: {line!r} {process.stderr.read()}")  # type: ignore[union-attr]
    return process, found.group(1)


def _cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "ownmark.cli", "-q", *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)


@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_serve_and_verify_in_two_processes(
    world: dict[str, Any], tmp_path: Path, backend: str
) -> None:
    model_file = world["marked_file"]
    if backend == "onnxruntime":
        model_file = tmp_path / "m.onnx"
        exported = _cli("export", world["marked_file"], "--onnx", model_file)
        assert exported.returncode == 0, exported.stderr
    log = tmp_path / "access.jsonl"
    server, url = _start(model_file, "--backend", backend, "--access-log", log)
    try:
        evidence = tmp_path / "evidence.json"
        run = _cli(
            "verify",
            "--key",
            world["key_file"],
            "--url",
            url,
            "--max-queries",
            "40",
            "--decoys",
            "1",
            "--evidence",
            evidence,
        )
        assert run.returncode == 0, run.stdout + run.stderr
        assert "verdict: owned" in run.stdout
        doc = load_evidence(evidence)
        assert doc["suspect"]["address"] == url and doc["result"]["verdict"] == "owned"
        assert doc["result"]["queries"] <= 10 and doc["result"]["decoys"] > 0
        assert evidence.with_suffix(".md").read_text().startswith("# Ownership verification")
        checked = _cli("evidence", "check", evidence, "--key", world["key_file"])
        assert checked.returncode == 4  # intact, but unsigned
        assert "intact: verdict owned" in checked.stdout, checked.stdout + checked.stderr
        # The server logged every request it answered, as JSON lines.
        entries = [json.loads(line) for line in log.read_text().splitlines()]
        assert any(e["path"].endswith("/infer") and e["status"] == 200 for e in entries)
    finally:
        server.terminate()
        server.wait(timeout=20)


def test_clean_model_is_not_owned_and_tokens_are_enforced(
    world: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OWNMARK_SERVE_TOKEN", "s3cret")
    server, url = _start(world["dir"] / "c.safetensors")
    try:
        # No token: the API refuses, the verifier says so in one line (exit 2), no verdict.
        assert _verify(world, url, tmp_path) == 2
        monkeypatch.setenv("OWNMARK_TOKEN", "s3cret")
        assert _verify(world, url, tmp_path) == 1
        doc = load_evidence(tmp_path / "ev.json")
        assert doc["result"]["verdict"] == "not owned"
        assert doc["result"]["stop_reason"] in ("futile", "budget")
    finally:
        server.terminate()
        server.wait(timeout=20)


# ------------------------------------------------------------------- a misbehaving API


class FaultyApi:
    """A v2 API in front of a real model that misbehaves as each test scripts.

    ``fault(request_number, labels)`` returns (status, headers, body bytes, delay seconds);
    ``labels`` are the model's true answers for the request's images.
    """

    def __init__(self, model: Classifier) -> None:
        self.model = model
        self.fault: Callable[[int, list[int]], tuple[int, dict[str, str], bytes, float]] = (
            lambda n, labels: (200, {}, _labels_body(labels), 0.0)
        )
        self.infers = 0
        api = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:  # keep test output clean
                pass

            def _send(self, status: int, headers: dict[str, str], body: bytes) -> None:
                self.send_response(status)
                for name, value in {"Content-Type": "application/json", **headers}.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                meta = {
                    "name": "m",
                    "versions": ["1"],
                    "platform": "pytorch",
                    "inputs": [{"name": "images", "datatype": "UINT8", "shape": [-1, 1, 28, 28]}],
                    "outputs": [{"name": "label", "datatype": "INT64", "shape": [-1]}],
                }
                self._send(200, {}, json.dumps(meta).encode())

            def do_POST(self) -> None:
                request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                tensor = request["inputs"][0]
                images = torch.tensor(tensor["data"], dtype=torch.uint8).reshape(tensor["shape"])
                labels = predict(api.model, images).tolist()
                api.infers += 1
                status, headers, body, delay = api.fault(api.infers, labels)
                time.sleep(delay)
                # The client may have given up already (the timeout test).
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    self._send(status, headers, body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v2/models/m"

    def __enter__(self) -> FaultyApi:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def _labels_body(labels: list[int]) -> bytes:
    output = {"name": "label", "datatype": "INT64", "shape": [len(labels)], "data": labels}
    return json.dumps({"model_name": "m", "outputs": [output]}).encode()


@pytest.fixture
def faulty(world: dict[str, Any]) -> Iterator[FaultyApi]:
    with FaultyApi(world["marked"]) as api:
        yield api


def _probabilities(labels: list[int], *, nan: bool = False, tie: bool = False) -> bytes:
    """One-hot probabilities of ``labels``; with ``nan`` a NaN in every row, with ``tie`` the
    label's score shared with the next class."""
    rows = [[1.0 if c == label else 0.0 for c in range(10)] for label in labels]
    for row, label in zip(rows, labels, strict=True):
        if nan:
            row[(label + 1) % 10] = float("nan")
        if tie:
            row[(label + 1) % 10] = 1.0
    data = [v for row in rows for v in row]
    output = {"name": "probabilities", "datatype": "FP32", "shape": [len(labels), 10], "data": data}
    return json.dumps({"outputs": [output]}).encode()


FAULTS: dict[str, tuple[Callable[[int, list[int]], Any], int, str]] = {
    # name: (fault, expected exit code, text expected in the evidence's errors)
    "http 500": (lambda n, lab: (500, {}, b'{"error": "boom"}', 0.0), 3, "HTTP 500"),
    "malformed json": (lambda n, lab: (200, {}, b'{"outputs": [', 0.0), 3, "JSON"),
    "wrong count": (lambda n, lab: (200, {}, _labels_body(lab[:-1]), 0.0), 3, "expected"),
    "out of range": (lambda n, lab: (200, {}, _labels_body([12] * len(lab)), 0.0), 3, "0..9"),
    "probabilities": (lambda n, lab: (200, {}, _probabilities(lab), 0.0), 3, "probabilities"),
    "slow": (lambda n, lab: (200, {}, _labels_body(lab), 1.0), 3, "timed out"),
    # Issue 7: a hostile API can neither stall the verifier nor exhaust its memory.
    "oversized": (
        lambda n, lab: (200, {}, b'{"outputs": [' + b"0," * (5 * 2**20), 0.0),
        3,
        "larger than 8 MiB",
    ),
    "retry-after 3600": (
        lambda n, lab: (429, {"Retry-After": "3600"}, b'{"error": "later"}', 0.0),
        3,
        "Retry-After",
    ),
    "redirect elsewhere": (
        lambda n, lab: (307, {"Location": "http://127.0.0.1:9/v2/models/m/infer"}, b"{}", 0.0),
        3,
        "another server",
    ),
    # Scores that name no class: each such image is a failed query, never a match.
    "nan scores": (lambda n, lab: (200, {}, _probabilities(lab, nan=True), 0.0), 3, "non-finite"),
    "tied scores": (lambda n, lab: (200, {}, _probabilities(lab, tie=True), 0.0), 3, "tied"),
}
SCORE_FAULTS = ("nan scores", "tied scores")


@pytest.mark.parametrize("name", list(FAULTS))
def test_misbehaving_api_is_never_owned(
    world: dict[str, Any], faulty: FaultyApi, tmp_path: Path, name: str
) -> None:
    fault, code, text = FAULTS[name]
    faulty.fault = fault
    answer = "probabilities" if name in SCORE_FAULTS else "label"
    extra = ["--answer", answer, "--retries", "1", "--timeout", "0.4"]
    assert _verify(world, faulty.url, tmp_path, *extra) == code
    doc = load_evidence(tmp_path / "ev.json")
    assert doc["result"]["verdict"] == "inconclusive" and doc["result"]["matches"] == 0
    assert any(text in (q["error"] or "") for q in doc["queries"]), doc["queries"][0]
    assert check_evidence(tmp_path / "ev.json", world["key"]).valid


def test_rate_limited_api_is_waited_for(
    world: dict[str, Any], faulty: FaultyApi, tmp_path: Path
) -> None:
    def first_429(n: int, labels: list[int]) -> tuple[int, dict[str, str], bytes, float]:
        if n == 1:
            return 429, {"Retry-After": "1"}, b'{"error": "slow down"}', 0.0
        return 200, {}, _labels_body(labels), 0.0

    faulty.fault = first_429
    start = time.monotonic()
    assert _verify(world, faulty.url, tmp_path) == 0
    assert time.monotonic() - start >= 1.0  # it honoured Retry-After instead of giving up
    assert faulty.infers >= 2
    assert load_evidence(tmp_path / "ev.json")["result"]["errors"] == 0


def test_flaky_api_turns_not_owned_into_inconclusive(world: dict[str, Any], tmp_path: Path) -> None:
    """A clean model behind an API that fails half the time: the failures could have been
    matches, so the verdict is inconclusive, not "not owned" (and certainly not "owned")."""
    with FaultyApi(world["clean"]) as api:
        api.fault = lambda n, lab: (
            (500, {}, b"{}", 0.0) if n % 2 else (200, {}, _labels_body(lab), 0.0)
        )
        code = _verify(world, api.url, tmp_path, "--retries", "0", "--batch", "4")
    doc = load_evidence(tmp_path / "ev.json")
    assert code == 3 and doc["result"]["verdict"] == "inconclusive"
    assert doc["result"]["errors"] > 0


def test_server_down_is_a_clear_error(
    world: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with FaultyApi(world["marked"]) as api:
        url = api.url  # the port is free again once the server is gone
    assert _verify(world, url, tmp_path, "--retries", "0") == 2
    err = capsys.readouterr().err
    assert "cannot connect" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "ev.json").exists()
    with pytest.raises(httpx.ConnectError):
        httpx.get(url, timeout=1)
