"""Export a :class:`~ownmark.models.Classifier` to ONNX for serving with onnxruntime.

The exported graph takes the same input as the prediction API: uint8 pixels
``images`` of shape ``(N, C, H, W)`` (N is dynamic). It converts them to float in ``[0, 1]``,
applies the classifier (whose normalisation is part of the model) and returns float32
``logits`` ``(N, K)``. The file's ``metadata_props`` identify it as an ownmark export
(``format: ownmark-onnx``) and carry the model spec, so :class:`~ownmark.serve.OnnxBackend`
needs nothing else.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import tempfile
import warnings
from collections.abc import Iterator
from itertools import chain
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ownmark import __version__
from ownmark.errors import ConfigError, ModelFileError, one_line
from ownmark.fileio import atomic_path
from ownmark.models import Classifier
from ownmark.serve.backends import ONNX_FORMAT, ONNX_FORMAT_VERSION

__all__ = ["export_onnx", "onnx_metadata"]

# The check after export: onnxruntime's logits must match torch's to
# |a - b| <= ATOL + RTOL * |b|. The relative part keeps large logits of trained models (where
# float32 summation order alone moves the 5th digit) from failing a correct export.
_ATOL = 1e-4
_RTOL = 1e-4
_CHECK_BATCH = 3  # differs from the tracing batch (2), so a batch size baked in is caught


class _Uint8Classifier(nn.Module):
    """uint8 pixels in, logits out: the graph the ONNX file holds."""

    def __init__(self, model: Classifier) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        # Cast then divide in float32: bit-identical to ownmark.metrics.to_float_images.
        logits: torch.Tensor = self.model(images.to(torch.float32) / 255.0)
        return logits


def onnx_metadata(model: Classifier) -> dict[str, str]:
    """The ``metadata_props`` written into an exported file (all values are strings)."""
    spec = model.spec
    return {
        "format": ONNX_FORMAT,
        "format_version": ONNX_FORMAT_VERSION,
        "ownmark_spec": json.dumps(
            {
                "arch": spec.arch,
                "num_classes": spec.num_classes,
                "in_channels": spec.in_channels,
                "input_size": list(spec.input_size),
                "mean": list(spec.mean),
                "std": list(spec.std),
            },
            sort_keys=True,
        ),
        "ownmark_version": __version__,
    }


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence the exporter's progress prints, warnings and torch log records."""
    logger = logging.getLogger("torch")
    level = logger.level
    logger.setLevel(logging.ERROR)
    sink = io.StringIO()
    try:
        with (
            warnings.catch_warnings(),
            contextlib.redirect_stdout(sink),
            contextlib.redirect_stderr(sink),
        ):
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def _require_onnx() -> None:
    """ConfigError now, rather than after a slow export, if the ONNX packages are missing."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError as exc:
        raise ConfigError(
            "ONNX export needs onnx, onnxruntime and onnxscript; install them with "
            "pip install 'ownmark[onnx]'"
        ) from exc


def _device_of(model: nn.Module) -> torch.device:
    first = next(chain(model.parameters(), model.buffers()), None)
    return first.device if first is not None else torch.device("cpu")


def _export_dynamo(wrapper: nn.Module, example: torch.Tensor, opset: int | None) -> Any:
    """The torch.export-based exporter (the default since torch 2.9); returns a ModelProto."""
    batch = torch.export.Dim("batch")
    program = torch.onnx.export(
        wrapper,
        (example,),
        None,
        input_names=["images"],
        output_names=["logits"],
        dynamic_shapes=({0: batch},),
        opset_version=opset,
        dynamo=True,
        verbose=False,
    )
    if program is None:
        raise RuntimeError("the exporter returned no program")
    return program.model_proto


def _export_torchscript(wrapper: nn.Module, example: torch.Tensor, opset: int | None) -> Any:
    """The legacy TorchScript exporter, a fallback for models torch.export cannot trace."""
    import onnx

    with tempfile.TemporaryDirectory(prefix="ownmark-onnx-") as folder:
        file = Path(folder) / "model.onnx"
        torch.onnx.export(
            wrapper,
            (example,),
            file,
            input_names=["images"],
            output_names=["logits"],
            dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}},
            opset_version=opset,
            dynamo=False,
            verbose=False,
        )
        return onnx.load(str(file))


def _to_proto(wrapper: nn.Module, example: torch.Tensor, opset: int | None, arch: str) -> Any:
    """Try the dynamo exporter, then TorchScript; one ModelFileError line if both fail."""
    try:
        return _export_dynamo(wrapper, example, opset)
    except Exception as first:  # the exporters raise many unrelated exception types
        try:
            return _export_torchscript(wrapper, example, opset)
        except Exception:
            raise ModelFileError(
                f"cannot export the {arch} model to ONNX ({one_line(first)}); models whose "
                "forward depends on tensor values or calls non-torch code cannot be exported"
            ) from first


def _check_against_torch(serialized: bytes, wrapper: nn.Module, model: Classifier) -> None:
    """Run the exported bytes in onnxruntime and compare logits with torch's."""
    import onnxruntime

    spec = model.spec
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(
        0, 256, (_CHECK_BATCH, spec.in_channels, *spec.input_size), generator=generator
    ).to(torch.uint8)
    with torch.inference_mode():
        expected = wrapper(images.to(_device_of(model))).float().cpu().numpy()
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    try:
        session = onnxruntime.InferenceSession(
            serialized, sess_options=options, providers=["CPUExecutionProvider"]
        )
        got = session.run(["logits"], {"images": images.numpy()})[0]
    except Exception as exc:
        raise ModelFileError(
            f"the ONNX export of the {spec.arch} model does not run in onnxruntime "
            f"({one_line(exc)}); try another opset"
        ) from exc
    if got.shape != expected.shape:
        raise ModelFileError(
            f"the ONNX export of the {spec.arch} model returns logits of shape {got.shape}, "
            f"torch returns {expected.shape}; the model cannot be exported faithfully"
        )
    diff = np.abs(got.astype(np.float64) - expected.astype(np.float64))
    allowed = _ATOL + _RTOL * np.abs(expected.astype(np.float64))
    if not np.all(diff <= allowed):  # also catches NaN
        raise ModelFileError(
            f"the ONNX export of the {spec.arch} model disagrees with torch (max abs logit "
            f"difference {float(np.nanmax(diff)):.3g}); the model cannot be exported faithfully "
            "(random or value-dependent layers?)"
        )


def export_onnx(
    model: Classifier, path: str | os.PathLike[str], *, opset: int | None = None
) -> Path:
    """Export ``model`` to the ONNX file ``path`` and check it against torch.

    The graph's input is ``images`` (uint8, ``(N, C, H, W)``, dynamic N) and its output
    ``logits`` (float32, ``(N, K)``). The exported file is run in onnxruntime on random uint8
    images and its logits must match torch's (``|onnx - torch| <= 1e-4 + 1e-4 * |torch|``).
    The file is written atomically: on any error nothing (not even a temp file) is left.

    Uses the torch.export-based exporter (``dynamo=True``); if that cannot trace the model, the
    legacy TorchScript exporter is tried. The model is exported in eval mode; its train/eval
    mode is restored afterwards.

    Args:
        model: the classifier to export.
        path: destination ``.onnx`` file; parent folders are created.
        opset: ONNX opset version; default ``None`` lets the exporter choose (18+).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        TypeError: ``model`` is not a Classifier.
        ConfigError: onnx/onnxruntime are not installed.
        ModelFileError: the model cannot be exported, or the export disagrees with torch.
    """
    if not isinstance(model, Classifier):
        raise TypeError(f"export_onnx expects a Classifier, got {type(model).__name__}")
    _require_onnx()
    spec = model.spec
    was_training = model.training
    # The wrapper itself must be in eval mode too: the TorchScript exporter restores the mode
    # of the module it was given, recursively, which would switch dropout back on.
    wrapper = _Uint8Classifier(model).eval()
    try:
        # Batch 2, not 1: torch.export specialises size-1 dimensions to constants.
        example = torch.zeros(
            (2, spec.in_channels, *spec.input_size), dtype=torch.uint8, device=_device_of(model)
        )
        with _quiet():
            proto = _to_proto(wrapper, example, opset, spec.arch)
        for key, value in onnx_metadata(model).items():
            entry = next((p for p in proto.metadata_props if p.key == key), None)
            if entry is None:
                entry = proto.metadata_props.add()
                entry.key = key
            entry.value = value
        proto.doc_string = f"ownmark {spec.arch} classifier: uint8 images in, logits out"
        try:
            serialized: bytes = proto.SerializeToString()
        except Exception as exc:  # protobuf's 2 GiB limit
            raise ModelFileError(
                f"cannot serialise the ONNX export of the {spec.arch} model ({one_line(exc)})"
            ) from exc
        wrapper.eval()  # in case an exporter left another mode behind
        with _quiet():
            _check_against_torch(serialized, wrapper, model)
    finally:
        model.train(was_training)
    target = Path(path)
    try:
        with atomic_path(target) as tmp:
            tmp.write_bytes(serialized)
    except OSError as exc:
        raise ModelFileError(f"cannot write {target}: {one_line(exc)}") from exc
    return target
