"""Tests for ownmark.serve: backends, ONNX export and the v2 prediction API on a live server."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, ClassVar

import httpx
import numpy as np
import onnx
import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from torch import nn

import ownmark.serve.onnx_export as onnx_export
from ownmark import __version__
from ownmark.data import DataSplits
from ownmark.errors import ConfigError, ModelFileError
from ownmark.metrics import predict, to_float_images
from ownmark.models import Classifier, ModelSpec, save_model
from ownmark.serve import (
    ANSWER_MODES,
    BACKENDS,
    BackgroundServer,
    OnnxBackend,
    PredictBackend,
    ServeConfig,
    TorchBackend,
    create_app,
    export_onnx,
    load_backend,
    serve_forever,
)
from ownmark.workflows import new_model

INFER = "/v2/models/model/infer"
TOKEN = "s3cret-token"
LOG_FIELDS = {"ts", "client", "method", "path", "status", "batch", "duration_ms", "request_id"}
LOG_FIELDS |= {"bytes_in", "bytes_out"}
FUZZ = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


# --- fixtures and helpers -------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits64(small_digits: DataSplits) -> torch.Tensor:
    return small_digits.test.images[:64]


@pytest.fixture(scope="module")
def model(small_digits: DataSplits) -> Classifier:
    """An untrained zhang_mnist whose labels still vary from digit to digit.

    Untrained networks tend to give every image the same label, which would make "labels
    match" tests toothless; centring the last layer's logits on the data fixes that.
    """
    model = new_model("zhang_mnist", small_digits, seed=0).eval()
    net = model.network
    with torch.no_grad():
        x = model.normalize(to_float_images(small_digits.train.images[:256]))
        features = net.classifier[:-1](net.features(x))
        last = net.classifier[-1]
        last.bias.copy_(-(features.mean(0) @ last.weight.T))
    return model


@pytest.fixture(scope="module")
def backend(model: Classifier) -> TorchBackend:
    return TorchBackend(model)


@contextmanager
def _running(backend: PredictBackend, **config: Any) -> Iterator[httpx.Client]:
    with (
        BackgroundServer(create_app(backend, ServeConfig(**config))) as server,
        httpx.Client(base_url=server.url, timeout=60) as client,
    ):
        yield client


@pytest.fixture(scope="module")
def label_api(backend: TorchBackend) -> Iterator[httpx.Client]:
    with _running(backend) as client:
        yield client


@pytest.fixture(scope="module")
def topk_api(backend: TorchBackend) -> Iterator[httpx.Client]:
    with _running(backend, answer="topk", top_k=3) as client:
        yield client


@pytest.fixture(scope="module")
def proba_api(backend: TorchBackend) -> Iterator[httpx.Client]:
    with _running(backend, answer="probabilities") as client:
        yield client


@pytest.fixture(scope="module")
def strict_api(backend: TorchBackend) -> Iterator[httpx.Client]:
    """Token required, at most 4 images and 64 KiB per request."""
    with _running(backend, token=TOKEN, max_batch=4, max_body_bytes=64 * 1024) as client:
        yield client


@pytest.fixture(scope="module")
def onnx_file(model: Classifier, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_onnx(model, tmp_path_factory.mktemp("onnx") / "model.onnx")


@pytest.fixture(scope="module")
def onnx_api(onnx_file: Path) -> Iterator[httpx.Client]:
    with _running(OnnxBackend(onnx_file)) as client:
        yield client


def _request(images: torch.Tensor, **extra: Any) -> dict[str, Any]:
    tensor = {
        "name": "images",
        "shape": list(images.shape),
        "datatype": "UINT8",
        "data": images.reshape(-1).tolist(),
    }
    return {"inputs": [tensor], **extra}


def _outputs(response: httpx.Response) -> dict[str, dict[str, Any]]:
    assert response.status_code == 200, response.text
    return {out["name"]: out for out in response.json()["outputs"]}


def _assert_error(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    message = body["error"]
    assert isinstance(message, str) and message and "\n" not in message
    return message


def _assert_well_formed(response: httpx.Response) -> None:
    """Never a server error; every client error is JSON {"error": "..."}."""
    assert response.status_code < 500, response.text
    if response.status_code >= 400:
        _assert_error(response, response.status_code)


class _BrokenBackend:
    """A backend whose model always fails: a server fault, not a client one."""

    platform = "pytorch"
    num_classes = 3
    input_shape = (1, 2, 2)
    description: ClassVar[dict[str, str]] = {"arch": "broken"}

    def predict_proba(self, images: np.ndarray) -> np.ndarray:
        raise RuntimeError("model exploded")


# --- health and metadata --------------------------------------------------------------------


def test_health_and_server_metadata_need_no_token(strict_api: httpx.Client) -> None:
    assert strict_api.get("/v2/health/live").json() == {"live": True}
    assert strict_api.get("/v2/health/ready").json() == {"ready": True}
    assert strict_api.get("/v2").json() == {
        "name": "ownmark",
        "version": __version__,
        "extensions": [],
    }


@pytest.mark.parametrize(
    ("api", "outputs"),
    [
        ("label_api", [("label", "INT64", [-1])]),
        (
            "topk_api",
            [
                ("label", "INT64", [-1]),
                ("topk_labels", "INT64", [-1, 3]),
                ("topk_scores", "FP32", [-1, 3]),
            ],
        ),
        ("proba_api", [("probabilities", "FP32", [-1, 10])]),
    ],
)
def test_model_metadata_describes_tensors(
    api: str, outputs: list[tuple[str, str, list[int]]], request: pytest.FixtureRequest
) -> None:
    client: httpx.Client = request.getfixturevalue(api)
    meta = client.get("/v2/models/model").json()
    assert meta["name"] == "model"
    assert meta["versions"] == ["1"]
    assert meta["platform"] == "pytorch"
    assert meta["inputs"] == [{"name": "images", "datatype": "UINT8", "shape": [-1, 1, 28, 28]}]
    assert [(o["name"], o["datatype"], o["shape"]) for o in meta["outputs"]] == outputs
    answer = {"label_api": "label", "topk_api": "topk", "proba_api": "probabilities"}[api]
    assert meta["parameters"]["answer"] == answer
    assert meta["parameters"]["num_classes"] == 10
    assert client.get("/v2/models/model/versions/1").json() == meta
    assert client.get("/v2/models/model/ready").json() == {"name": "model", "ready": True}
    assert client.get("/v2/models/model/versions/1/ready").json()["ready"] is True


def test_top_k_is_capped_at_the_number_of_classes(backend: TorchBackend) -> None:
    with _running(backend, answer="topk", top_k=50) as client:
        meta = client.get("/v2/models/model").json()
        assert meta["parameters"]["top_k"] == 10
        out = _outputs(client.post(INFER, json=_request(torch.zeros(2, 1, 28, 28).byte())))
        assert out["topk_labels"]["shape"] == [2, 10]


def test_unknown_model_version_and_route_are_json_404(label_api: httpx.Client) -> None:
    assert "unknown model" in _assert_error(label_api.get("/v2/models/resnet"), 404)
    _assert_error(label_api.get("/v2/models/resnet/ready"), 404)
    _assert_error(label_api.post("/v2/models/resnet/infer", json={}), 404)
    _assert_error(label_api.post("/v2/models/model/versions/2/infer", json={}), 404)
    _assert_error(label_api.get("/v2/models/model/versions/2"), 404)
    _assert_error(label_api.get("/nothing/here"), 404)
    assert "allowed: GET" in _assert_error(label_api.post("/v2/health/live"), 405)
    _assert_error(label_api.get(INFER), 405)


def test_openapi_documents_the_infer_request(label_api: httpx.Client) -> None:
    schema = label_api.get("/openapi.json").json()
    operation = schema["paths"]["/v2/models/{model_name}/infer"]["post"]
    request = operation["requestBody"]["content"]["application/json"]["schema"]
    assert request["required"] == ["inputs"]
    tensor = request["properties"]["inputs"]["items"]
    assert tensor["properties"]["datatype"]["enum"] == ["UINT8"]
    assert tensor["properties"]["shape"]["prefixItems"][1]["enum"] == [1]
    error = operation["responses"]["413"]["content"]["application/json"]["schema"]
    assert error["required"] == ["error"]


# --- inference ------------------------------------------------------------------------------


def test_labels_equal_predict(
    label_api: httpx.Client, model: Classifier, digits64: torch.Tensor
) -> None:
    expected = predict(model, digits64).tolist()
    assert len(set(expected)) >= 4  # the model discriminates, so a mix-up would show
    response = label_api.post(INFER, json=_request(digits64, id="req-1"))
    body = response.json()
    assert (body["model_name"], body["model_version"], body["id"]) == ("model", "1", "req-1")
    label = _outputs(response)["label"]
    assert (label["datatype"], label["shape"], label["data"]) == ("INT64", [64], expected)
    # The versioned route and nested data give the same answer; no id, no "id" key.
    nested = {"inputs": [{**_request(digits64)["inputs"][0], "data": digits64.tolist()}]}
    response = label_api.post("/v2/models/model/versions/1/infer", json=nested)
    assert "id" not in response.json()
    assert _outputs(response)["label"]["data"] == expected


def test_concurrent_requests_get_their_own_answers(
    label_api: httpx.Client, model: Classifier, digits64: torch.Tensor
) -> None:
    chunks = [digits64[i : i + 8] for i in range(0, 64, 8)]

    def ask(images: torch.Tensor) -> list[int]:
        data: list[int] = _outputs(label_api.post(INFER, json=_request(images)))["label"]["data"]
        return data

    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(ask, chunks))
    assert answers == [predict(model, chunk).tolist() for chunk in chunks]


def test_topk_answers_are_sorted_and_start_with_the_label(
    topk_api: httpx.Client, model: Classifier, digits64: torch.Tensor
) -> None:
    out = _outputs(topk_api.post(INFER, json=_request(digits64)))
    assert out["topk_labels"]["shape"] == out["topk_scores"]["shape"] == [64, 3]
    labels = np.array(out["topk_labels"]["data"]).reshape(64, 3)
    scores = np.array(out["topk_scores"]["data"]).reshape(64, 3)
    assert labels[:, 0].tolist() == out["label"]["data"] == predict(model, digits64).tolist()
    assert all(len(set(row)) == 3 for row in labels.tolist())
    assert np.all(np.diff(scores, axis=1) <= 0)
    assert np.all((scores > 0) & (scores <= 1))
    # A request may ask for a subset of the outputs, in its own order.
    only = topk_api.post(
        INFER, json=_request(digits64[:2], outputs=[{"name": "topk_scores"}, {"name": "label"}])
    )
    assert [o["name"] for o in only.json()["outputs"]] == ["topk_scores", "label"]
    wrong = _request(digits64[:2], outputs=[{"name": "probabilities"}])
    assert "topk_labels" in _assert_error(topk_api.post(INFER, json=wrong), 400)


def test_probabilities_sum_to_one_and_agree_with_predict(
    proba_api: httpx.Client, model: Classifier, digits64: torch.Tensor
) -> None:
    out = _outputs(proba_api.post(INFER, json=_request(digits64)))
    assert list(out) == ["probabilities"]  # no label output, like a probability API
    proba = np.array(out["probabilities"]["data"]).reshape(out["probabilities"]["shape"])
    assert proba.shape == (64, 10)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-5)
    assert proba.argmax(axis=1).tolist() == predict(model, digits64).tolist()
    with torch.no_grad():
        expected = torch.softmax(model(to_float_images(digits64)), dim=1).numpy()
    np.testing.assert_allclose(proba, expected, atol=1e-6)
    label = _request(digits64[:1], outputs=[{"name": "label"}])
    _assert_error(proba_api.post(INFER, json=label), 400)


# --- client errors --------------------------------------------------------------------------


def _mutate(change: str) -> dict[str, Any]:
    body = _request(torch.full((2, 1, 28, 28), 7, dtype=torch.uint8))
    tensor = body["inputs"][0]
    if change == "shape_width":
        tensor["shape"] = [2, 1, 28, 27]
    elif change == "shape_channels":
        tensor["shape"] = [2, 3, 28, 28]
    elif change == "shape_rank":
        tensor["shape"] = [2, 784]
    elif change == "shape_zero_batch":
        tensor["shape"], tensor["data"] = [0, 1, 28, 28], []
    elif change == "shape_strings":
        tensor["shape"] = ["2", 1, 28, 28]
    elif change == "datatype_fp32":
        tensor["datatype"] = "FP32"
    elif change == "value_256":
        tensor["data"][100] = 256
    elif change == "value_minus_1":
        tensor["data"][-1] = -1
    elif change == "value_float":
        tensor["data"][0] = 1.0
    elif change == "value_bool":
        tensor["data"][5] = True
    elif change == "value_null":
        tensor["data"][5] = None
    elif change == "value_huge":
        tensor["data"][5] = 2**80
    elif change == "count_short":
        tensor["data"] = tensor["data"][:-1]
    elif change == "count_long":
        tensor["data"].append(0)
    elif change == "nested_ragged":
        tensor["data"] = [[1, 2], [3]]
    elif change == "missing_inputs":
        del body["inputs"]
    elif change == "missing_data":
        del tensor["data"]
    elif change == "two_inputs":
        body["inputs"].append(dict(tensor))
    elif change == "input_name":
        tensor["name"] = "pixels"
    elif change == "id_not_string":
        body["id"] = 17
    elif change == "extra_field":
        body["model"] = "x"
    elif change == "outputs_unknown":
        body["outputs"] = [{"name": "logits"}]
    elif change == "outputs_twice":
        body["outputs"] = [{"name": "label"}, {"name": "label"}]
    elif change == "parameters_list":
        body["parameters"] = []
    else:
        raise AssertionError(change)
    return body


@pytest.mark.parametrize(
    "change",
    [
        "shape_width",
        "shape_channels",
        "shape_rank",
        "shape_zero_batch",
        "shape_strings",
        "datatype_fp32",
        "value_256",
        "value_minus_1",
        "value_float",
        "value_bool",
        "value_null",
        "value_huge",
        "count_short",
        "count_long",
        "nested_ragged",
        "missing_inputs",
        "missing_data",
        "two_inputs",
        "input_name",
        "id_not_string",
        "extra_field",
        "outputs_unknown",
        "outputs_twice",
        "parameters_list",
    ],
)
def test_bad_requests_get_400(label_api: httpx.Client, change: str) -> None:
    _assert_error(label_api.post(INFER, json=_mutate(change)), 400)


@pytest.mark.parametrize(
    "body", [b"", b"{", b"[1, 2", b"\xff\xfe\x00", b"null", b"[]", b'"images"', b"[" * 100_000]
)
def test_malformed_json_gets_400(label_api: httpx.Client, body: bytes) -> None:
    _assert_error(label_api.post(INFER, content=body), 400)


def test_token_is_required_on_model_routes(
    strict_api: httpx.Client, digits64: torch.Tensor
) -> None:
    body = _request(digits64[:2])
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"}):
        response = strict_api.post(INFER, json=body, headers=headers)
        assert "token" in _assert_error(response, 401)
        assert response.headers["www-authenticate"].startswith("Bearer")
        _assert_error(strict_api.get("/v2/models/model", headers=headers), 401)
        _assert_error(strict_api.get("/v2/models/model/ready", headers=headers), 401)
    # Unknown models stay hidden behind the token too.
    _assert_error(strict_api.get("/v2/models/other"), 401)
    good = {"Authorization": f"Bearer {TOKEN}"}
    assert _outputs(strict_api.post(INFER, json=body, headers=good))["label"]["shape"] == [2]
    assert strict_api.get("/v2/models/model", headers=good).status_code == 200
    _assert_error(strict_api.get("/v2/models/other", headers=good), 404)


def test_oversized_bodies_and_batches_get_413(strict_api: httpx.Client) -> None:
    good = {"Authorization": f"Bearer {TOKEN}"}
    big = json.dumps(_request(torch.zeros(4, 1, 28, 28).byte(), id="x" * 70_000)).encode()
    assert len(big) > 64 * 1024
    _assert_error(strict_api.post(INFER, content=big, headers=good), 413)
    # Without Content-Length (chunked), the server counts the bytes that actually arrive.
    chunks = iter([big[i : i + 4096] for i in range(0, len(big), 4096)])
    response = strict_api.post(INFER, content=chunks, headers=good)
    assert "content-length" not in response.request.headers
    _assert_error(response, 413)
    over = _request(torch.zeros(5, 1, 28, 28).byte())
    assert "limit of 4" in _assert_error(strict_api.post(INFER, json=over, headers=good), 413)
    # The connection is still usable afterwards.
    at_limit = _request(torch.zeros(4, 1, 28, 28).byte())
    assert strict_api.post(INFER, json=at_limit, headers=good).status_code == 200


def test_a_failing_model_gives_a_json_500_and_is_logged(tmp_path: Path) -> None:
    log = tmp_path / "access.jsonl"
    with _running(_BrokenBackend(), access_log=str(log)) as client:
        response = client.post(INFER, json=_request(torch.zeros(1, 1, 2, 2).byte()))
        assert "model failed" in _assert_error(response, 500)
        # Client errors are still caught before the model runs.
        _assert_error(client.post(INFER, json=_request(torch.zeros(1, 1, 3, 3).byte())), 400)
    assert [json.loads(line)["status"] for line in log.read_text().splitlines()] == [500, 400]


def test_access_log_has_one_json_line_per_request(
    backend: TorchBackend, digits64: torch.Tensor, tmp_path: Path
) -> None:
    log = tmp_path / "logs" / "access.jsonl"
    good = {"Authorization": f"Bearer {TOKEN}"}
    with _running(backend, token=TOKEN, access_log=str(log), max_batch=8) as client:
        calls = [
            (lambda: client.get("/v2/health/live"), 200, None, None),
            (
                lambda: client.post(INFER, json=_request(digits64[:3], id="a1"), headers=good),
                200,
                3,
                "a1",
            ),
            (lambda: client.post(INFER, content=b"{", headers=good), 400, None, None),
            (lambda: client.get("/v2/models/model"), 401, None, None),
            (lambda: client.get("/v2/models/nope", headers=good), 404, None, None),
            (lambda: client.post(INFER, json=_request(digits64[:9]), headers=good), 413, 9, None),
        ]
        responses = [call() for call, *_ in calls]
    lines = log.read_text().splitlines()
    assert len(lines) == len(calls)
    for line, response, (_, status, batch, request_id) in zip(lines, responses, calls, strict=True):
        record = json.loads(line)
        assert set(record) == LOG_FIELDS
        assert record["status"] == response.status_code == status
        assert (record["batch"], record["request_id"]) == (batch, request_id)
        assert record["method"] == response.request.method
        assert record["path"] == response.request.url.path
        assert record["client"] == "127.0.0.1"
        assert record["bytes_out"] == len(response.content)
        assert record["bytes_in"] == len(response.request.content)
        assert record["duration_ms"] >= 0
        assert datetime.fromisoformat(record["ts"]).utcoffset() is not None


# --- configuration and server lifecycle -----------------------------------------------------


@pytest.mark.parametrize(
    "config",
    [
        {"answer": "logits"},
        {"top_k": 0},
        {"max_batch": 0},
        {"max_body_bytes": -1},
        {"max_batch": True},
        {"model_name": "a/b"},
        {"model_name": ""},
        {"token": "has space"},
        {"token": ""},
        {"access_log": ""},
    ],
)
def test_invalid_serve_config_is_a_config_error(config: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        ServeConfig(**config)


def test_answer_modes_and_backends_are_listed() -> None:
    assert ANSWER_MODES == ("label", "topk", "probabilities")
    assert BACKENDS == ("torch", "onnxruntime")


def test_unwritable_access_log_is_a_config_error(backend: TorchBackend, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ConfigError, match="access log"):
        create_app(backend, ServeConfig(access_log=str(blocker / "access.jsonl")))


def test_background_server_frees_its_port(backend: TorchBackend) -> None:
    server = BackgroundServer(create_app(backend, ServeConfig()))
    with pytest.raises(RuntimeError):
        _ = server.url
    with server:
        port = server.port
        assert server.url == f"http://127.0.0.1:{port}"
        assert httpx.get(server.url + "/v2/health/live").status_code == 200
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/v2/health/live")


def test_busy_port_is_a_config_error(backend: TorchBackend) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(ConfigError, match="another port"):
            serve_forever(backend, ServeConfig(), "127.0.0.1", port)
        with (
            pytest.raises(ConfigError),
            BackgroundServer(create_app(backend, ServeConfig()), port=port),
        ):
            pass


# --- backends and ONNX ----------------------------------------------------------------------


def test_onnx_export_matches_torch_on_real_digits(
    onnx_file: Path, model: Classifier, digits64: torch.Tensor, backend: TorchBackend
) -> None:
    proto = onnx.load(str(onnx_file))
    props = {p.key: p.value for p in proto.metadata_props}
    assert props["format"] == "ownmark-onnx"
    assert props["ownmark_version"] == __version__
    spec = json.loads(props["ownmark_spec"])
    assert (spec["arch"], spec["num_classes"], spec["in_channels"], spec["input_size"]) == (
        "zhang_mnist",
        10,
        1,
        [28, 28],
    )
    (graph_input,) = proto.graph.input
    assert graph_input.name == "images"
    assert graph_input.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert [d.dim_value for d in graph_input.type.tensor_type.shape.dim][1:] == [1, 28, 28]
    assert graph_input.type.tensor_type.shape.dim[0].dim_param  # dynamic batch axis
    assert [o.name for o in proto.graph.output] == ["logits"]

    onnx_backend = OnnxBackend(onnx_file)
    assert onnx_backend.platform == "onnxruntime"
    assert (onnx_backend.num_classes, onnx_backend.input_shape) == (10, (1, 28, 28))
    assert onnx_backend.description["arch"] == "zhang_mnist"
    images = digits64.numpy()
    proba = onnx_backend.predict_proba(images)
    assert proba.dtype == np.float32 and proba.shape == (64, 10)
    assert proba.argmax(axis=1).tolist() == predict(model, digits64).tolist()
    np.testing.assert_allclose(proba, backend.predict_proba(images), atol=1e-5)
    assert onnx_backend.predict_proba(images[:1]).shape == (1, 10)


def test_served_onnx_model_answers_like_served_torch_model(
    onnx_api: httpx.Client, label_api: httpx.Client, digits64: torch.Tensor
) -> None:
    assert onnx_api.get("/v2/models/model").json()["platform"] == "onnxruntime"
    body = _request(digits64)
    onnx_labels = _outputs(onnx_api.post(INFER, json=body))["label"]["data"]
    assert onnx_labels == _outputs(label_api.post(INFER, json=body))["label"]["data"]
    _assert_error(onnx_api.post(INFER, json=_mutate("value_256")), 400)


def test_load_backend_by_name(model: Classifier, onnx_file: Path, tmp_path: Path) -> None:
    model_file = tmp_path / "model.safetensors"
    save_model(model, model_file)
    torch_backend = load_backend(model_file)
    assert isinstance(torch_backend, TorchBackend) and torch_backend.platform == "pytorch"
    assert torch_backend.description["arch"] == "zhang_mnist"
    assert isinstance(load_backend(onnx_file, "onnxruntime"), OnnxBackend)
    with pytest.raises(ConfigError, match="onnxruntime, torch"):
        load_backend(model_file, "tensorflow")
    with pytest.raises(ModelFileError, match="onnxruntime"):
        load_backend(onnx_file, "torch")
    with pytest.raises(ModelFileError, match="torch"):
        load_backend(model_file, "onnxruntime")


def test_onnx_backend_rejects_bad_files(onnx_file: Path, tmp_path: Path) -> None:
    with pytest.raises(ModelFileError, match="not found") as info:
        OnnxBackend(tmp_path / "missing.onnx")
    assert "\n" not in str(info.value)
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"this is not a protobuf")
    with pytest.raises(ModelFileError, match="not a valid ONNX model"):
        OnnxBackend(garbage)
    foreign = onnx.load(str(onnx_file))
    del foreign.metadata_props[:]
    onnx.save(foreign, str(tmp_path / "foreign.onnx"))
    with pytest.raises(ModelFileError, match="not exported by ownmark"):
        OnnxBackend(tmp_path / "foreign.onnx")


class _NoisyNet(nn.Module):
    """Random output: exports fine, but onnxruntime can never agree with torch."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(784, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.linear(x.flatten(1))
        return logits + 10 * torch.rand_like(logits)


class _NumpyNet(nn.Module):
    """Leaves torch for numpy: no exporter can follow."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(784, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        values = np.asarray(x.detach().flatten(1).numpy() > 0.5, dtype=np.float32)
        logits: torch.Tensor = self.linear(torch.from_numpy(values))
        return logits


@pytest.mark.parametrize("network", [_NoisyNet, _NumpyNet])
def test_failed_export_is_one_line_and_writes_nothing(
    network: type[nn.Module], tmp_path: Path
) -> None:
    torch.manual_seed(0)
    model = Classifier(ModelSpec.with_defaults("custom.module:factory"), network())
    model.train()
    with pytest.raises(ModelFileError) as info:
        export_onnx(model, tmp_path / "out" / "model.onnx")
    assert "\n" not in str(info.value)
    assert list(tmp_path.rglob("*")) == []  # no file, no temp file, not even the folder
    assert model.training  # train/eval mode restored


def test_export_falls_back_to_torchscript(
    model: Classifier, digits64: torch.Tensor, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: object) -> None:
        raise RuntimeError("dynamo cannot trace this")

    monkeypatch.setattr(onnx_export, "_export_dynamo", broken)
    path = export_onnx(model, tmp_path / "model.onnx")
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]
    labels = OnnxBackend(path).predict_proba(digits64.numpy()).argmax(axis=1)
    assert labels.tolist() == predict(model, digits64).tolist()


def test_backends_reject_wrong_arrays(backend: TorchBackend) -> None:
    with pytest.raises(TypeError):
        backend.predict_proba(np.zeros((1, 1, 28, 28), dtype=np.float32))
    with pytest.raises(ValueError):
        backend.predict_proba(np.zeros((1, 3, 28, 28), dtype=np.uint8))
    assert backend.predict_proba(np.zeros((0, 1, 28, 28), dtype=np.uint8)).shape == (0, 10)
    assert isinstance(backend, PredictBackend)


# --- property-based fuzzing of the live server ----------------------------------------------

_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda children: (
        st.lists(children, max_size=5)
        | st.dictionaries(
            st.sampled_from(["inputs", "id", "outputs", "parameters", "name", "shape", "data"])
            | st.text(max_size=8),
            children,
            max_size=5,
        )
    ),
    max_leaves=25,
)


def _is_int_list(value: object) -> bool:
    return isinstance(value, list) and all(type(v) is int for v in value)


def _outputs_ok(outputs: object) -> bool:
    """Whether a request's "outputs" is acceptable to the label server."""
    return (
        isinstance(outputs, list)
        and len(outputs) == 1
        and isinstance(outputs[0], dict)
        and outputs[0].get("name") == "label"
        and set(outputs[0]) <= {"name", "parameters"}
        and isinstance(outputs[0].get("parameters", {}), dict)
    )


def _nest(flat: list[Any], sizes: list[int]) -> list[Any]:
    """Group ``flat`` into lists of ``sizes[0]``, those into lists of ``sizes[1]``, ..."""
    for size in sizes:
        flat = [flat[i : i + size] for i in range(0, len(flat), size)]
    return flat


_FAULTS = (
    "shape",
    "zero_batch",
    "value_range",
    "value_type",
    "count",
    "nesting",
    "datatype",
    "name",
    "missing_field",
    "tensor_field",
    "inputs",
    "id",
    "outputs",
    "request_field",
    "not_object",
)


@st.composite
def _infer_requests(draw: st.DrawFn) -> tuple[Any, int | None]:
    """A valid request with 0-3 faults; returns it and N if it has no fault (so must work)."""
    n = draw(st.integers(1, 5))
    shape = [n, 1, 28, 28]
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    data: list[Any] = rng.integers(0, 256, n * 784).tolist()
    faults = draw(st.lists(st.sampled_from(_FAULTS), max_size=3, unique=True))
    tensor: dict[str, Any] = {"name": "images", "shape": shape, "datatype": "UINT8"}
    if "shape" in faults:
        tensor["shape"] = draw(
            (st.lists(st.integers(-2, 300), max_size=5) | _json_values).filter(
                # type() check: [True, 1, 28, 28] == [1, 1, 28, 28] in Python, not in JSON.
                lambda v: not (_is_int_list(v) and v == shape)
            )
        )
    if "zero_batch" in faults:
        tensor["shape"] = [0, 1, 28, 28]
    index = draw(st.integers(0, len(data) - 1))
    if "value_range" in faults:
        data[index] = draw(st.integers().filter(lambda v: not 0 <= v <= 255))
    if "value_type" in faults:
        data[index] = draw(
            (st.floats() | st.booleans() | st.none() | st.text(max_size=3) | _json_values).filter(
                lambda v: type(v) is not int
            )
        )
    if "count" in faults:
        data = data[:-1] if draw(st.booleans()) else [*data, 0]
    if "nesting" in faults:
        data = _nest(data, [784])  # [N][784]: nested one level too shallow
    elif draw(st.booleans()) and len(data) == n * 784:
        data = _nest(data, [28, 28, 1])  # nested exactly like the shape
    tensor["data"] = data
    if "datatype" in faults:
        tensor["datatype"] = draw(st.sampled_from(["uint8", "FP32", "INT64", "BYTES", ""]))
    if "name" in faults:
        tensor["name"] = draw(st.text(max_size=8).filter(lambda v: v != "images"))
    if "missing_field" in faults:
        del tensor[draw(st.sampled_from(["name", "shape", "datatype", "data"]))]
    if "tensor_field" in faults:
        key = draw(st.sampled_from(["parameters", "contents", "extra"]))
        tensor[key] = draw(
            _json_values.filter(lambda v: key != "parameters" or type(v) is not dict)
        )
    elif draw(st.booleans()):
        tensor["parameters"] = {}
    body: dict[str, Any] = {"inputs": [tensor]}
    if "inputs" in faults:
        body["inputs"] = draw(st.sampled_from([[], [tensor, tensor], tensor, None, "images"]))
    if "id" in faults:
        body["id"] = draw(_json_values.filter(lambda v: v is not None and type(v) is not str))
    elif draw(st.booleans()):
        body["id"] = draw(st.text(max_size=10))
    if "outputs" in faults:
        names = st.sampled_from(["label", "probabilities", "topk_scores", "", "logits"])
        body["outputs"] = draw(
            (st.lists(st.fixed_dictionaries({"name": names}), max_size=3) | _json_values).filter(
                lambda v: not _outputs_ok(v)
            )
        )
    elif draw(st.booleans()):
        body["outputs"] = [{"name": "label"}]
    if "request_field" in faults:
        key = draw(st.sampled_from(["parameters", "model_name", "input"]))
        body[key] = draw(_json_values.filter(lambda v: key != "parameters" or type(v) is not dict))
    elif draw(st.booleans()):
        body["parameters"] = {"note": "ignored"}
    if "not_object" in faults:
        return [body], None
    return body, (None if faults else n)


@FUZZ
@given(case=_infer_requests())
def test_fuzz_structured_requests(label_api: httpx.Client, case: tuple[Any, int | None]) -> None:
    body, n = case
    # json.dumps, not httpx's json=: it writes NaN/Infinity tokens, which the server must reject.
    response = label_api.post(INFER, content=json.dumps(body).encode())
    _assert_well_formed(response)
    if n is not None:  # a valid request must be answered
        assert _outputs(response)["label"]["shape"] == [n]
    else:
        assert response.status_code in (400, 413), body


@settings(FUZZ, max_examples=100)
@given(value=_json_values)
def test_fuzz_any_json_body(label_api: httpx.Client, value: Any) -> None:
    response = label_api.post(INFER, content=json.dumps(value).encode())
    _assert_error(response, 400)


@settings(FUZZ, max_examples=50)
@given(body=st.binary(max_size=300))
def test_fuzz_raw_bytes(label_api: httpx.Client, body: bytes) -> None:
    _assert_error(label_api.post(INFER, content=body), 400)


@settings(FUZZ, max_examples=60)
@given(
    method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"]),
    segments=st.lists(
        st.sampled_from(["models", "model", "versions", "1", "infer", "ready", "health", "live"])
        | st.text(
            st.characters(codec="utf-8", exclude_categories=["Cc"], exclude_characters="/?#"),
            max_size=6,
        ),
        max_size=5,
    ),
)
def test_fuzz_routes(label_api: httpx.Client, method: str, segments: list[str]) -> None:
    path = "/v2/" + "/".join(segments)
    _assert_well_formed(label_api.request(method, path, content=b"{}"))


@settings(FUZZ, max_examples=60)
@given(
    # HTTP clients refuse control characters and edge whitespace in header values.
    value=st.text(st.characters(codec="latin-1", exclude_categories=["Cc"]), max_size=40).map(
        lambda v: v.strip(" \t")
    )
)
@example(value=f"Bearer {TOKEN}")
@example(value=f"bearer   {TOKEN}")
def test_fuzz_authorization_header(strict_api: httpx.Client, value: str) -> None:
    response = strict_api.get(
        "/v2/models/model", headers={"Authorization": value.encode("latin-1")}
    )
    _assert_well_formed(response)
    scheme, _, credentials = value.strip(" \t").partition(" ")
    right = scheme.lower() == "bearer" and credentials.strip() == TOKEN
    assert response.status_code == (200 if right else 401)
