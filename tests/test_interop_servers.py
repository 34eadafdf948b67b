"""Interop: ``ownmark verify`` against prediction servers other people run, on 127.0.0.1.

* **MLServer** (a real one, the ``mlserver`` package): an MNIST model behind a custom runtime
  written here, as an owner would meet it: input ``input-0`` takes FP32 pixels in [0, 1],
  the metadata lists no inputs (MLServer's default), the answer is probabilities, and the
  runtime refuses requests of more than 8 images. Options, not code, reach it: ``--input-name
  input-0 --input-datatype FP32 --scale unit --input-shape 1,28,28 --max-batch 8``.
* **TorchServe** needs Java, which this machine does not have, so a small server here
  follows its documented inference API instead: ``POST /predictions/NAME`` with the image
  file as the body, answering the stock image classifier's top-5 ``{name: probability}``
  map, names from an ``index_to_name.json`` (``--labels``).

A watermarked model is "owned" and a clean one "not owned" on both, and the evidence of
each run checks out, its request bytes re-derived from the key and the recorded options.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from ownmark.cli import main
from ownmark.data import DataSplits
from ownmark.keys import save_key
from ownmark.models import Classifier, save_model
from ownmark.schemes import create_scheme
from ownmark.train import TrainConfig
from ownmark.verify.evidence import _canonical, check_evidence, load_evidence
from ownmark.workflows import train_model

NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


@pytest.fixture(scope="module")
def world(small_digits: DataSplits, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A one-label noise key, a LeNet-5 carrying it and a clean one (about 3 s of training)."""
    folder = tmp_path_factory.mktemp("interop")
    scheme = create_scheme("noise", num_keys=40, num_decoys=60, source_class=1, target_class=0)
    # A stand-in p0 for this small key (calibration is tested elsewhere).
    key = scheme.generate(small_digits, seed=0).with_p0(0.05, "test stand-in")
    # One thread: on a shared 2-core machine, torch's thread pool waits on busy cores.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        marked, result, clean = _train(small_digits, key)
    finally:
        torch.set_num_threads(threads)
    assert result.watermark_accuracy is not None and result.watermark_accuracy >= 0.95
    save_key(key, folder / "k.key")
    save_model(marked, folder / "marked.safetensors")
    save_model(clean, folder / "clean.safetensors")
    labels = folder / "index_to_name.json"
    labels.write_text(json.dumps({str(i): name for i, name in enumerate(NAMES)}))
    return {"key": key, "marked": marked, "clean": clean, "dir": folder, "labels": labels}


def _train(data: DataSplits, key: Any) -> tuple[Classifier, Any, Classifier]:
    config = TrainConfig(epochs=12, seed=1, key_ratio=0.2)
    marked, result = train_model(data, config, arch="lenet5", key=key, progress=False)
    clean, _ = train_model(data, TrainConfig(epochs=8, seed=2), arch="lenet5", progress=False)
    return marked, result, clean


def _verify(world: dict[str, Any], url: str, evidence: Path, *options: str) -> int:
    argv = ["-q", "verify", "--key", str(world["dir"] / "k.key"), "--url", url]
    return main([*argv, "--max-queries", "40", "--evidence", str(evidence), *options])


def _checks_out(world: dict[str, Any], evidence: Path) -> dict[str, Any]:
    check = check_evidence(evidence, world["key"])
    assert check.valid, check.problems
    assert not any("not re-derived" in note for note in check.notes), check.notes
    return load_evidence(evidence)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# ------------------------------------------------------------------------------- MLServer

RUNTIME = textwrap.dedent(
    '''
    """An MNIST runtime as a deployment would write it: FP32 pixels in [0, 1] in,
    probabilities out, at most 8 images per request."""

    import torch
    from mlserver import MLModel
    from mlserver.codecs import NumpyCodec
    from mlserver.types import InferenceRequest, InferenceResponse, ResponseOutput

    from ownmark.models import load_model


    class MnistRuntime(MLModel):
        async def load(self) -> bool:
            self._net = load_model(self.settings.parameters.uri).eval()
            return True

        async def predict(self, payload: InferenceRequest) -> InferenceResponse:
            (tensor,) = payload.inputs
            if tensor.name != "input-0" or tensor.datatype != "FP32":
                raise ValueError(f"expected FP32 input-0, got {tensor.datatype} {tensor.name}")
            pixels = torch.from_numpy(NumpyCodec.decode_input(tensor).copy())
            if pixels.shape[0] > 8 or tuple(pixels.shape[1:]) != (1, 28, 28):
                raise ValueError(f"expected at most 8 images of 1x28x28, got {pixels.shape}")
            if pixels.min() < 0 or pixels.max() > 1:
                raise ValueError("pixels must lie in [0, 1]")
            with torch.no_grad():
                probabilities = torch.softmax(self._net(pixels), dim=1)
            return InferenceResponse(
                model_name=self.name,
                id=payload.id,
                outputs=[
                    ResponseOutput(
                        name="output-0",
                        shape=list(probabilities.shape),
                        datatype="FP32",
                        data=probabilities.reshape(-1).tolist(),
                    )
                ],
            )
    '''
)


@pytest.fixture(scope="module")
def mlserver(world: dict[str, Any]) -> Iterator[str]:
    """A real MLServer on 127.0.0.1 serving models "marked" and "clean"; yields its URL."""
    if importlib.util.find_spec("mlserver") is None:
        pytest.fail(
            "mlserver is not installed: pip install -c constraints.txt -e '.[test]'",
            pytrace=False,
        )
    root = world["dir"] / "mlserver"
    root.mkdir()
    (root / "mnist_runtime.py").write_text(RUNTIME)
    port = _free_port()
    settings = {
        "host": "127.0.0.1",
        "http_port": port,
        "grpc_port": _free_port(),
        "metrics_endpoint": None,
        "parallel_workers": 0,
    }
    (root / "settings.json").write_text(json.dumps(settings))
    for name in ("marked", "clean"):
        (root / name).mkdir()
        model = {
            "name": name,
            "implementation": "mnist_runtime.MnistRuntime",
            "parameters": {"uri": str(world["dir"] / f"{name}.safetensors")},
        }
        (root / name / "model-settings.json").write_text(json.dumps(model))
    path = os.pathsep.join([str(root), *sys.path])
    env = {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1"}
    log = (root / "server.log").open("w")
    command = [sys.executable, "-c", "from mlserver.cli import main; main()", "start", str(root)]
    process = subprocess.Popen(command, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                ready = [
                    httpx.get(f"{url}/v2/models/{n}/ready", timeout=1) for n in ("marked", "clean")
                ]
                if all(r.status_code == 200 for r in ready):
                    break
            except httpx.TransportError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"MLServer did not start:\n{(root / 'server.log').read_text()[-3000:]}")
            time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


MLSERVER_OPTIONS = (
    "--input-name",
    "input-0",
    "--input-datatype",
    "FP32",
    "--scale",
    "unit",
    "--input-shape",
    "1,28,28",
    "--max-batch",
    "8",
)


def test_mlserver_metadata_lists_no_inputs_until_told(
    world: dict[str, Any], mlserver: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    meta = httpx.get(f"{mlserver}/v2/models/marked").json()
    assert meta["inputs"] == []  # what an owner meets: MLServer declares nothing by default
    assert _verify(world, f"{mlserver}/v2/models/marked", tmp_path / "ev.json") == 2
    err = capsys.readouterr().err
    assert "lists no inputs" in err and "--input-shape 1,28,28" in err
    assert len(err.strip().splitlines()) == 1


def test_mlserver_watermarked_model_is_owned(
    world: dict[str, Any], mlserver: str, tmp_path: Path
) -> None:
    evidence = tmp_path / "ev.json"
    assert _verify(world, f"{mlserver}/v2/models/marked", evidence, *MLSERVER_OPTIONS) == 0
    doc = _checks_out(world, evidence)
    assert doc["format_version"] == "3" and doc["result"]["verdict"] == "owned"
    suspect = doc["suspect"]
    assert suspect["address"] == f"{mlserver}/v2/models/marked/infer"
    assert suspect["options"]["encoding"] == {
        "datatype": "FP32",
        "scale": "unit",
        "mean": [],
        "std": [],
        "layout": "NCHW",
        "shape": [1, 28, 28],
    }
    assert suspect["options"]["input_name"] == "input-0"
    # 16 images per query, at most 8 per HTTP request: two bodies per query.
    assert all(len(w["bodies"]) == 2 for w in doc["wire"])
    assert main(["evidence", "check", str(evidence), "--key", str(world["dir"] / "k.key")]) == 4

    # Options edited after the fact (the digest made to match again) no longer give the
    # recorded bytes: evidence check re-derives them.
    edited = json.loads(evidence.read_text())
    edited["suspect"]["options"]["encoding"]["scale"] = "none"
    edited["suspect"]["options"]["encoding"]["datatype"] = "UINT8"
    edited["digest"] = hashlib.sha256(_canonical(edited)).hexdigest()
    evidence.write_text(json.dumps(edited))
    problems = check_evidence(evidence, world["key"]).problems
    assert any("bytes sent are not what" in p for p in problems), problems


def test_mlserver_clean_model_is_not_owned(
    world: dict[str, Any], mlserver: str, tmp_path: Path
) -> None:
    evidence = tmp_path / "ev.json"
    assert _verify(world, f"{mlserver}/v2/models/clean", evidence, *MLSERVER_OPTIONS) == 1
    doc = _checks_out(world, evidence)
    assert doc["result"]["verdict"] == "not owned" and doc["result"]["errors"] == 0


# --------------------------------------------------------------------- a TorchServe-style API


class TorchServeApi:
    """TorchServe's documented inference API in front of real models.

    ``POST /predictions/NAME[/VERSION]`` takes the image file as the body and answers like
    the stock image classifier handler: the top 5 classes as ``{name: probability}``. An
    unknown model is a 404 with TorchServe's error body; ``GET /ping`` says "Healthy".
    """

    def __init__(self, models: dict[str, Classifier]) -> None:
        self.models = models
        self.requests = 0
        api = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _send(self, status: int, payload: object) -> None:
                body = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                self._send(200, {"status": "Healthy"})

            def do_POST(self) -> None:
                data = self.rfile.read(int(self.headers["Content-Length"]))
                parts = self.path.strip("/").split("/")
                if len(parts) not in (2, 3) or parts[0] != "predictions":
                    self._send(404, {"code": 404, "type": "ResourceNotFoundException"})
                    return
                model = api.models.get(parts[1])
                if model is None:
                    message = f"Model not found: {parts[1]}"
                    self._send(
                        404, {"code": 404, "type": "ModelNotFoundException", "message": message}
                    )
                    return
                api.requests += 1
                pixels = np.array(Image.open(io.BytesIO(data)).convert("L"), dtype=np.uint8)
                with torch.no_grad():
                    scores = torch.softmax(model(torch.from_numpy(pixels)[None, None] / 255.0), 1)
                top = torch.topk(scores[0], 5)
                answer = {
                    NAMES[int(i)]: float(p) for p, i in zip(top.values, top.indices, strict=True)
                }
                self._send(200, answer)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> TorchServeApi:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.parametrize(
    ("model", "code", "verdict"), [("marked", 0, "owned"), ("clean", 1, "not owned")]
)
def test_torchserve_api(
    world: dict[str, Any], tmp_path: Path, model: str, code: int, verdict: str
) -> None:
    evidence = tmp_path / "ev.json"
    with TorchServeApi({"marked": world["marked"], "clean": world["clean"]}) as api:
        url = f"{api.url}/predictions/{model}"
        labels = ("--labels", str(world["labels"]))
        assert _verify(world, url, evidence, "--protocol", "torchserve", *labels) == code
        doc = _checks_out(world, evidence)
        assert doc["result"]["verdict"] == verdict and doc["result"]["errors"] == 0
        assert doc["suspect"]["address"] == url and doc["suspect"]["protocol"] == "torchserve"
        assert doc["suspect"]["options"]["labels"] == NAMES
        # One image per request: as many bodies as images.
        sent = sum(len(w["bodies"]) for w in doc["wire"])
        assert sent == len(doc["queries"]) == api.requests
    # Evidence written by format 2 (no options, no bodies) is still read and checked.
    old = {k: v for k, v in doc.items() if k not in ("wire", "digest")}
    old["format_version"] = "2"
    old["suspect"] = {k: v for k, v in doc["suspect"].items() if k != "options"}
    old["digest"] = hashlib.sha256(_canonical(old)).hexdigest()
    evidence.write_text(json.dumps(old))
    check = check_evidence(evidence, world["key"])
    assert check.valid and check.verdict == verdict, check.problems
    assert any("format 2 records no request bodies" in note for note in check.notes)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--mean", "0.5,x", "--std", "1", "--input-datatype", "FP32"], "--mean takes"),
        (["--scale", "unit"], "--input-datatype FP32 or FP16"),
        (["--input-shape", "1,28"], "--input-shape 1,28 holds 28 values"),
        (["--layout", "HWC"], "NCHW, NHWC"),
        (["--protocol", "torchserve", "--labels", "{dir}/three.txt"], "names 3 classes"),
        (["--protocol", "torchserve", "--max-batch", "4"], "one image per request"),
        (["--labels", "{dir}/index_to_name.json"], "torchserve, template and python"),
        (["--protocol", "template", "--output-name", "x"], "--output-name applies only"),
    ],
)
def test_bad_options_are_one_line_errors(
    world: dict[str, Any],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    options: list[str],
    message: str,
) -> None:
    (world["dir"] / "three.txt").write_text("a\nb\nc\n")
    options = [o.format(dir=world["dir"]) for o in options]
    # Never contacted: the options fail first.
    path = "predictions/m" if "torchserve" in options else "v2/models/m"
    url = f"http://127.0.0.1:9/{path}"
    assert _verify(world, url, tmp_path / "ev.json", *options) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err
