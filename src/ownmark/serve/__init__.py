"""Serve a classifier as a prediction API, and export it to ONNX.

The API speaks the REST flavour of the Open Inference Protocol, also known as the KServe v2
inference protocol (https://kserve.github.io/website/latest/modelserving/data_plane/v2_protocol/,
specification at https://github.com/kserve/open-inference-protocol), so clients written for
KServe, Triton or Seldon MLServer can query it. One model is served, with one input tensor::

    POST /v2/models/{name}/infer
    {"id": "42", "inputs": [{"name": "images", "datatype": "UINT8",
                             "shape": [N, C, H, W], "data": [N*C*H*W pixels 0..255]}]}

and, depending on :attr:`ServeConfig.answer`, the outputs ``label`` (INT64 ``[N]``),
``topk_labels``/``topk_scores`` (``[N, k]``) or ``probabilities`` (FP32 ``[N, K]``). Health,
server metadata and model metadata follow the same protocol; errors are ``{"error": "..."}``.

Pieces:

* :class:`PredictBackend` - the model behind the API: :class:`TorchBackend` (an ownmark model
  file in PyTorch) or :class:`OnnxBackend` (an ONNX file in onnxruntime); :func:`load_backend`.
* :func:`export_onnx` - a uint8-in, logits-out ONNX graph, checked against torch.
* :func:`create_app` with :class:`ServeConfig` - the FastAPI app.
* :class:`BackgroundServer` (tests, demos) and :func:`serve_forever` (``ownmark serve``).

The server holds under abuse (timeouts for request heads and bodies, a cap on inference
requests in flight and on connections: see :class:`ServeConfig`) and never answers from a
broken model: non-finite weights are refused at start (:func:`check_finite_weights`), and
non-finite scores, or tied top scores for label and top-k answers, give HTTP 500.
"""

from __future__ import annotations

from ownmark.serve.app import ANSWER_MODES, ServeConfig, create_app
from ownmark.serve.backends import (
    BACKEND_REGISTRY,
    BACKENDS,
    NonFiniteScoresError,
    OnnxBackend,
    PredictBackend,
    TorchBackend,
    check_finite_weights,
    load_backend,
)
from ownmark.serve.background import BackgroundServer, serve_forever
from ownmark.serve.onnx_export import export_onnx

__all__ = [
    "ANSWER_MODES",
    "BACKENDS",
    "BACKEND_REGISTRY",
    "BackgroundServer",
    "NonFiniteScoresError",
    "OnnxBackend",
    "PredictBackend",
    "ServeConfig",
    "TorchBackend",
    "check_finite_weights",
    "create_app",
    "export_onnx",
    "load_backend",
    "serve_forever",
]
