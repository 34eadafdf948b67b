"""Prediction backends: what the server runs to turn uint8 images into class probabilities.

Two backends answer the same :class:`PredictBackend` protocol: :class:`TorchBackend` runs an
ownmark model file in PyTorch, :class:`OnnxBackend` runs an ONNX file written by
:func:`ownmark.serve.onnx_export.export_onnx` in onnxruntime, whose graph takes the uint8
pixels directly. Both return softmax probabilities; the server derives labels and top-k.

A broken model must not answer: its argmax over NaN scores is class 0 for every image, which
could pass for a confident label. So both backends refuse, when they are created, a model
whose weights are not all finite (:class:`~ownmark.errors.ConfigError` naming the tensor),
and raise :class:`NonFiniteScoresError` when a forward pass produces a NaN or infinite logit
(the server answers that request with HTTP 500).
"""

from __future__ import annotations

import json
import os
import threading
from itertools import chain
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np
import torch

from ownmark.errors import ConfigError, ModelFileError, one_line
from ownmark.metrics import to_float_images
from ownmark.models import Classifier, load_model
from ownmark.registry import Registry

if TYPE_CHECKING:
    from ownmark.attacks.defence import DefendedSuspect

__all__ = [
    "BACKENDS",
    "BACKEND_REGISTRY",
    "ONNX_FORMAT",
    "ONNX_FORMAT_VERSION",
    "NonFiniteScoresError",
    "OnnxBackend",
    "PredictBackend",
    "TorchBackend",
    "check_finite_weights",
    "load_backend",
]

BACKENDS = ("torch", "onnxruntime")
"""Names accepted by :func:`load_backend`."""

ONNX_FORMAT = "ownmark-onnx"
"""Value of the ``format`` metadata property that marks an ONNX file exported by ownmark."""
ONNX_FORMAT_VERSION = "1"
"""Current ``format_version`` of ownmark ONNX files."""

# Bounds memory per forward pass when a caller hands over a huge array.
_CHUNK = 512


@runtime_checkable
class PredictBackend(Protocol):
    """A classifier behind the server: uint8 images in, softmax probabilities out."""

    @property
    def platform(self) -> str:
        """``"pytorch"`` or ``"onnxruntime"`` (the v2 model metadata ``platform``)."""
        ...

    @property
    def num_classes(self) -> int:
        """Number of classes K."""
        ...

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of one input image."""
        ...

    @property
    def description(self) -> dict[str, str]:
        """Human-readable facts about the model (``arch`` and friends), all strings."""
        ...

    def predict_proba(self, images: np.ndarray) -> np.ndarray:
        """float32 ``(N, K)`` softmax probabilities for uint8 ``(N, C, H, W)`` images."""
        ...


def _check_images(images: np.ndarray, shape: tuple[int, int, int]) -> None:
    """Programming-error guard: the server validates requests before they get here."""
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8:
        raise TypeError(f"images must be a uint8 numpy array, got {type(images).__name__}")
    if images.ndim != 4 or tuple(images.shape[1:]) != shape:
        raise ValueError(
            f"images must have shape (N, {', '.join(map(str, shape))}), got {images.shape}"
        )


class NonFiniteScoresError(ArithmeticError):
    """The model produced a NaN or infinite logit: it has no answer for these images.

    Attributes:
        rows: indices (in the batch) of the images whose logits are not all finite.
    """

    def __init__(self, rows: list[int]) -> None:
        shown = ", ".join(map(str, rows[:10])) + (", ..." if len(rows) > 10 else "")
        super().__init__(f"the model produced non-finite scores for image(s) {shown}")
        self.rows = rows


def _check_logits(logits: np.ndarray) -> None:
    """Raise NonFiniteScoresError if any logit is NaN or infinite (before the softmax, which
    would turn a -inf logit into a plausible probability of 0)."""
    finite = np.isfinite(logits).all(axis=1)
    if not finite.all():
        raise NonFiniteScoresError([int(i) for i in np.flatnonzero(~finite)])


def _non_finite_weights(what: str, name: str, bad: int, size: int) -> ConfigError:
    return ConfigError(
        f"{what} has non-finite weights: tensor {name!r} holds {bad} NaN or infinite value(s) "
        f"of {size}; refusing to serve a broken model (its answers would be meaningless); "
        "retrain it or serve another file"
    )


def check_finite_weights(model: torch.nn.Module, what: str = "the model") -> None:
    """Refuse a model with a NaN or infinite parameter or buffer (e.g. a BatchNorm statistic).

    Raises:
        ConfigError: naming the first such tensor and how many of its values are bad.
    """
    # Buffers too: BatchNorm statistics, and the normalisation, which is not in the state dict.
    for name, tensor in chain(model.named_parameters(), model.named_buffers()):
        if not (tensor.is_floating_point() or tensor.is_complex()):
            continue
        finite = torch.isfinite(tensor.detach())
        if not bool(finite.all()):
            bad = int(finite.numel() - int(finite.sum()))
            raise _non_finite_weights(what, name, bad, int(tensor.numel()))


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits.astype(np.float32) - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    result: np.ndarray = (exp / exp.sum(axis=1, keepdims=True)).astype(np.float32)
    return result


class _Backend:
    """What both backends know about their model: architecture, classes, input shape."""

    def __init__(self, arch: str, num_classes: int, shape: tuple[int, int, int]) -> None:
        self._arch, self._num_classes, self._shape = arch, num_classes, shape

    @property
    def num_classes(self) -> int:
        return self._num_classes

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return self._shape

    @property
    def description(self) -> dict[str, str]:
        return {
            "arch": self._arch,
            "num_classes": str(self._num_classes),
            "input_shape": "x".join(map(str, self._shape)),
        }


class TorchBackend(_Backend):
    """Run a :class:`~ownmark.models.Classifier` in PyTorch on the CPU.

    The model is moved to the CPU and put in eval mode (in place). A lock serialises forward
    passes: FastAPI runs request handlers in a thread pool, and one model shared by several
    threads would only fight over the same CPU cores anyway.

    Raises:
        TypeError: ``model`` is not a Classifier.
        ConfigError: a weight or buffer of the model is NaN or infinite (the message names it).
    """

    def __init__(self, model: Classifier) -> None:
        if not isinstance(model, Classifier):
            raise TypeError(f"TorchBackend expects a Classifier, got {type(model).__name__}")
        check_finite_weights(model, f"model {model.spec.arch!r}")
        self._model = model.to("cpu").eval()
        spec = model.spec
        c, (h, w) = spec.in_channels, spec.input_size
        super().__init__(spec.arch, spec.num_classes, (c, h, w))
        self._lock = threading.Lock()

    @property
    def platform(self) -> str:
        return "pytorch"

    @property
    def description(self) -> dict[str, str]:
        return {**super().description, "backend": "torch"}

    def predict_proba(self, images: np.ndarray) -> np.ndarray:
        """float32 ``(N, K)`` probabilities.

        Raises:
            TypeError, ValueError: a wrong array.
            NonFiniteScoresError: a logit is NaN or infinite.
        """
        _check_images(images, self.input_shape)
        # torch.tensor copies, so read-only arrays (e.g. from np.frombuffer) are fine.
        batch = torch.tensor(images)
        parts: list[torch.Tensor] = []
        with self._lock, torch.inference_mode():
            for start in range(0, len(batch), _CHUNK):
                # Same uint8 → float conversion as ownmark.metrics.predict, so labels agree.
                logits = self._model(to_float_images(batch[start : start + _CHUNK])).float()
                try:
                    _check_logits(logits.numpy())
                except NonFiniteScoresError as exc:
                    raise NonFiniteScoresError([start + row for row in exc.rows]) from None
                parts.append(torch.softmax(logits, dim=1))
        if not parts:
            return np.zeros((0, self.num_classes), dtype=np.float32)
        result: np.ndarray = torch.cat(parts).numpy().astype(np.float32, copy=False)
        return result


class DefendedBackend(TorchBackend):
    """Serve a defended API an evasion attack built (:class:`~ownmark.attacks.defence.
    DefendedSuspect`): its transform and refusals apply to every request, as they would
    behind the attacker's server. Used by the robustness matrix to verify defences through
    HTTP like any other suspect.
    """

    def __init__(self, defended: DefendedSuspect) -> None:
        model = defended.model
        if not isinstance(model, Classifier):
            raise TypeError(f"DefendedBackend expects a Classifier, got {type(model).__name__}")
        super().__init__(model)
        self._num_classes = defended.answer_classes or self._num_classes
        self._defended = defended

    @property
    def description(self) -> dict[str, str]:
        return {**super().description, "backend": "torch, defended"}

    def predict_proba(self, images: np.ndarray) -> np.ndarray:
        """float32 ``(N, K)`` probabilities of the defended answers."""
        _check_images(images, self.input_shape)
        with self._lock, torch.inference_mode():
            scores = self._defended.scores(torch.tensor(images)).float().numpy()
        _check_logits(scores)
        return _softmax(scores)


def _import_onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError as exc:
        raise ConfigError(
            "the onnxruntime backend needs onnxruntime; install it with pip install 'ownmark[onnx]'"
        ) from exc
    return onnxruntime


def _read_onnx_spec(metadata: dict[str, str], path: Path) -> tuple[str, int, int, int, int]:
    """``(arch, num_classes, C, H, W)`` from an ownmark ONNX file's metadata properties."""
    if metadata.get("format") != ONNX_FORMAT:
        raise ModelFileError(
            f"{path} is an ONNX model but was not exported by ownmark (no 'format: "
            f"{ONNX_FORMAT}' metadata); export it with ownmark.serve.export_onnx "
            "(ownmark export --onnx)"
        )
    version = metadata.get("format_version")
    if version != ONNX_FORMAT_VERSION:
        raise ModelFileError(
            f"{path} uses ownmark ONNX format version {version!r}, but this ownmark reads "
            f"version {ONNX_FORMAT_VERSION!r}; upgrade ownmark or export the model again"
        )
    try:
        spec = json.loads(metadata["ownmark_spec"])
        arch = spec["arch"]
        num_classes = spec["num_classes"]
        in_channels = spec["in_channels"]
        h, w = spec["input_size"]
        dims = (num_classes, in_channels, h, w)
        if not isinstance(arch, str) or not all(
            isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in dims
        ):
            raise ValueError(f"bad values {spec!r}")
    except (KeyError, ValueError, TypeError) as exc:
        raise ModelFileError(
            f"{path}: invalid ownmark_spec metadata ({one_line(exc)}); the file is damaged, "
            "export the model again"
        ) from exc
    return arch, num_classes, in_channels, h, w


class OnnxBackend(_Backend):
    """Run an ONNX file written by :func:`~ownmark.serve.onnx_export.export_onnx` in onnxruntime.

    Uses the CPUExecutionProvider. The graph takes uint8 ``images`` and returns float32
    ``logits``; this backend applies the softmax. ``InferenceSession.run`` is thread-safe, so
    there is no lock. When the ``onnx`` package is installed (it comes with
    ``ownmark[onnx]``), the graph's weights (initializers and constants) are checked to be
    finite; onnxruntime alone cannot list them, and then only the answers are checked.

    Raises:
        ConfigError: onnxruntime is not installed, or a weight is NaN or infinite.
        ModelFileError: the file is missing, not ONNX, or was not exported by ownmark.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        file = Path(path)
        if not file.exists():
            raise ModelFileError(
                f"ONNX file not found: {file}; export one with ownmark.serve.export_onnx "
                "(ownmark export --onnx) or check the path"
            )
        if not file.is_file():
            raise ModelFileError(f"ONNX path {file} is not a file")
        ort = _import_onnxruntime()
        options = ort.SessionOptions()
        options.log_severity_level = 3  # errors only: no optimiser chatter on stderr
        try:
            self._session = ort.InferenceSession(
                str(file), sess_options=options, providers=["CPUExecutionProvider"]
            )
            metadata = dict(self._session.get_modelmeta().custom_metadata_map)
        except Exception as exc:  # onnxruntime raises its own exception types for bad files
            raise ModelFileError(
                f"{file} is not a valid ONNX model ({one_line(exc)}); export it with "
                "ownmark.serve.export_onnx (ownmark export --onnx)"
            ) from exc
        arch, num_classes, c, h, w = _read_onnx_spec(metadata, file)
        super().__init__(arch, num_classes, (c, h, w))
        self._path = file
        self._version = metadata.get("ownmark_version", "unknown")
        self._check_signature()
        _check_onnx_weights(file)

    def _check_signature(self) -> None:
        inputs = self._session.get_inputs()
        outputs = self._session.get_outputs()
        problem = None
        if len(inputs) != 1 or inputs[0].name != "images" or inputs[0].type != "tensor(uint8)":
            problem = "expected one uint8 input named 'images'"
        elif list(inputs[0].shape[1:]) != list(self._shape):
            problem = f"input shape {inputs[0].shape} does not match the metadata {self._shape}"
        elif not outputs or outputs[0].name != "logits":
            problem = "expected an output named 'logits'"
        if problem:
            raise ModelFileError(
                f"{self._path}: {problem}; the file was edited, export the model again"
            )

    @property
    def platform(self) -> str:
        return "onnxruntime"

    @property
    def description(self) -> dict[str, str]:
        return {
            **super().description,
            "backend": "onnxruntime",
            "exported_by": f"ownmark {self._version}",
        }

    def predict_proba(self, images: np.ndarray) -> np.ndarray:
        """float32 ``(N, K)`` probabilities.

        Raises:
            TypeError, ValueError: a wrong array.
            NonFiniteScoresError: a logit is NaN or infinite.
        """
        _check_images(images, self.input_shape)
        parts = [
            self._session.run(["logits"], {"images": np.ascontiguousarray(chunk)})[0]
            for chunk in (images[s : s + _CHUNK] for s in range(0, len(images), _CHUNK))
        ]
        if not parts:
            return np.zeros((0, self._num_classes), dtype=np.float32)
        logits = np.concatenate(parts)
        _check_logits(logits)
        return _softmax(logits)


def _check_onnx_weights(path: Path) -> None:
    """Refuse an ONNX graph with a non-finite weight (initializers and Constant nodes, in
    subgraphs too), if the ``onnx`` package is there to read them.

    Raises:
        ConfigError: naming the first such tensor.
    """
    try:
        import onnx
        from onnx import numpy_helper
    except ImportError:
        return
    graphs = [onnx.load(str(path)).graph]
    while graphs:
        graph = graphs.pop()
        named = [(init.name, init) for init in graph.initializer]
        for node in graph.node:
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.TENSOR:
                    named.append((f"{node.name or node.op_type}.{attr.name}", attr.t))
                elif attr.type == onnx.AttributeProto.GRAPH:
                    graphs.append(attr.g)
        for name, proto in named:
            array = numpy_helper.to_array(proto)
            if not np.issubdtype(array.dtype, np.inexact):
                continue
            bad = int(array.size - np.count_nonzero(np.isfinite(array)))
            if bad:
                raise _non_finite_weights(f"ONNX model {path}", name, bad, int(array.size))


def load_backend(
    path: str | os.PathLike[str], backend: str = "torch", *, allow_factory: str | None = None
) -> PredictBackend:
    """Load the model at ``path`` into a prediction backend.

    Args:
        path: an ownmark model file (``backend="torch"``) or an ONNX file exported by ownmark
            (``backend="onnxruntime"``).
        backend: one of :data:`BACKENDS`; default ``"torch"``.
        allow_factory: passed to :func:`ownmark.models.load_model` for models with a custom
            ``package.module:factory`` architecture (the exact factory name allows it); default
            ``None`` refuses them. Ignored by ``onnxruntime``, which runs no Python model code.

    Raises:
        ConfigError: unknown backend name, or onnxruntime is not installed.
        ModelFileError: the file is missing, corrupt, or of the other backend's kind.
    """
    return BACKEND_REGISTRY.create(backend, path=Path(path), allow_factory=allow_factory)


def _torch_backend(path: Path, allow_factory: str | None = None) -> PredictBackend:
    if path.suffix.lower() == ".onnx":
        raise ModelFileError(
            f"{path} looks like an ONNX file; serve it with the 'onnxruntime' backend"
        )
    return TorchBackend(load_model(path, allow_factory=allow_factory))


def _onnx_backend(path: Path, allow_factory: str | None = None) -> PredictBackend:
    if path.suffix.lower() == ".safetensors":
        raise ModelFileError(
            f"{path} looks like an ownmark model file, not ONNX; serve it with the 'torch' "
            "backend or export it with ownmark.serve.export_onnx (ownmark export --onnx)"
        )
    return OnnxBackend(path)


#: Prediction backends by name (the shared registry shape): ``factory(path, allow_factory)``.
BACKEND_REGISTRY: Registry[PredictBackend] = Registry("backend")
BACKEND_REGISTRY.add("torch", "ownmark model files run in PyTorch on the CPU", _torch_backend)
BACKEND_REGISTRY.add(
    "onnxruntime", "ONNX files exported by ownmark, run in onnxruntime", _onnx_backend
)
