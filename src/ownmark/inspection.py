"""What ``ownmark inspect`` and ``ownmark key show`` report: a key, model or evidence file.

:func:`inspect_file` tells the three kinds apart by their bytes (a safetensors header whose
``format`` metadata names a key or a model; a JSON object for evidence) and returns a
JSON-serialisable description. Only what is needed is read: a model's header gives its
architecture, metadata and tensor shapes (its weights are hashed, never loaded or run); a
key is loaded in full because its commitment can only be checked over every tensor; an
evidence file is parsed but not re-checked (that needs the key: ``ownmark evidence check``).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from safetensors import SafetensorError, safe_open

from ownmark.errors import ConfigError, EvidenceError, ModelFileError
from ownmark.keys import KEY_FORMAT, KEY_FORMAT_VERSION, KeySet, file_sha256, load_key
from ownmark.models.io import FORMAT as MODEL_FORMAT
from ownmark.models.io import read_model_metadata, spec_from_metadata
from ownmark.verify.verifier import ControlResult

__all__ = [
    "describe_evidence",
    "describe_key",
    "describe_model",
    "detect_kind",
    "inspect_file",
]

#: Model metadata that describes the architecture (shown as such, not as "file metadata").
_SPEC_KEYS = frozenset(
    {"format", "format_version", "arch", "num_classes", "in_channels", "input_size", "mean", "std"}
)
#: State-dict entries that are statistics, not learned parameters (BatchNorm's buffers).
_BUFFER_SUFFIXES = ("running_mean", "running_var", "num_batches_tracked")


def _safetensors_metadata(path: Path) -> dict[str, str] | None:
    """The header metadata if ``path`` is a safetensors file, else None (nothing else read).

    A safetensors file starts with the header's length (8 bytes, little-endian) and the
    header's JSON. A JSON file cannot look like that (its ninth byte would have to be the
    opening brace of a second object), so a file that does but cannot be read is a damaged
    safetensors file, not something else.

    Raises:
        ConfigError: the file starts like a safetensors file but is truncated or corrupt.
    """
    with path.open("rb") as handle:
        head = handle.read(9)
    if len(head) < 9 or head[8:9] != b"{" or head[:1] == b"{":
        return None
    try:
        with safe_open(str(path), framework="pt") as handle:
            return dict(handle.metadata() or {})
    except (SafetensorError, OSError, ValueError) as exc:
        raise ConfigError(
            f"{path} looks like a safetensors file but is truncated or corrupt "
            f"({' '.join(str(exc).split())})"
        ) from exc


def detect_kind(path: str | Path) -> str:
    """``"key"``, ``"model"`` or ``"evidence"``: what the file at ``path`` holds.

    Raises:
        ConfigError: the path is missing, a directory, or none of the three.
    """
    file = Path(path)
    if not file.exists():
        raise ConfigError(f"file not found: {file}")
    if not file.is_file():
        raise ConfigError(f"{file} is a folder, not a key, model or evidence file")
    metadata = _safetensors_metadata(file)
    if metadata is not None:
        fmt = metadata.get("format")
        if fmt == KEY_FORMAT:
            return "key"
        if fmt == MODEL_FORMAT:
            return "model"
        what = "no 'format' metadata" if fmt is None else f"format {fmt!r}"
        raise ConfigError(
            f"{file} is a safetensors file but neither an ownmark key nor an ownmark model ({what})"
        )
    with file.open("rb") as handle:
        start = handle.read(64).lstrip()
    if start.startswith(b"{"):
        return "evidence"
    raise ConfigError(
        f"{file} is not an ownmark key, model or evidence file (neither safetensors nor JSON)"
    )


def _p0_source(text: str) -> dict[str, Any] | str:
    """A calibration's JSON description as a dict; ``"assumed"`` (or any plain text) as is."""
    try:
        parsed = json.loads(text)
    except ValueError:
        return text
    return parsed if isinstance(parsed, dict) else text


def describe_key(key: KeySet) -> dict[str, Any]:
    """Everything a key commits to except its images: scheme, parameters, plan, provenance.

    The parameters are the resolved ones, secrets included (``secret_params`` names them):
    the key file itself is the secret, so whoever can read it may see them.
    """
    labels = sorted({int(label) for label in key.labels.tolist()})
    return {
        "kind": "key",
        "format_version": KEY_FORMAT_VERSION,
        "commitment": key.commitment,
        "scheme": key.scheme,
        "params": key.params,
        "secret_params": list(key.params.get("secret", [])),
        "dataset": key.dataset,
        "num_classes": key.num_classes,
        "extra_classes": key.extra_classes,
        "image_shape": list(key.image_shape),
        "key_samples": len(key),
        "key_labels": labels,
        "decoys": len(key.decoys),
        "seed": key.seed,
        "seed_source": key.seed_source,
        "p0": key.p0,
        "p0_calibrated": key.p0_source != "assumed",
        "p0_source": _p0_source(key.p0_source),
        "alpha": key.alpha,
        "max_queries": key.max_queries,
        "released_model_sha256": key.released_model_sha256 or None,
        "created": key.created,
        "timestamp": bool(key.timestamp_token),
        "extra_tensors": {
            name: {"dtype": str(t.dtype).removeprefix("torch."), "shape": list(t.shape)}
            for name, t in sorted(key.extra.items())
        },
    }


def describe_model(path: str | Path) -> dict[str, Any]:
    """A model file's architecture, metadata, sizes and SHA-256, from its header.

    The weights are hashed but not loaded, and no architecture code runs (a user factory's
    model is described as safely as a built-in one). ``parameters`` counts the stored values
    of every tensor except BatchNorm statistics, read off the header's shapes.
    """
    file = Path(path)
    metadata = read_model_metadata(file)
    spec = spec_from_metadata(metadata, source=str(file))
    shapes: dict[str, list[int]] = {}
    dtypes: set[str] = set()
    try:
        with safe_open(str(file), framework="pt") as handle:
            for name in handle.keys():  # noqa: SIM118 (a safe_open handle is not a dict)
                view = handle.get_slice(name)
                shapes[name] = list(view.get_shape())
                dtypes.add(str(view.get_dtype()))
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelFileError(f"{file}: cannot read the tensor table ({exc})") from exc
    params = sum(
        math.prod(shape) for name, shape in shapes.items() if not name.endswith(_BUFFER_SUFFIXES)
    )
    extra = {k: v for k, v in sorted(metadata.items()) if k not in _SPEC_KEYS}
    return {
        "kind": "model",
        "format_version": metadata.get("format_version"),
        "arch": spec.arch,
        "num_classes": spec.num_classes,
        "input_shape": [spec.in_channels, *spec.input_size],
        "mean": list(spec.mean),
        "std": list(spec.std),
        "parameters": params,
        "tensors": len(shapes),
        "dtypes": sorted(dtypes),
        "metadata": extra,
        "test_accuracy": _float_or_none(extra.get("test_accuracy")),
        "seed": extra.get("seed"),
        "key_commitment": extra.get("key_commitment"),
        "size_bytes": file.stat().st_size,
        "sha256": file_sha256(file),
    }


def _float_or_none(text: str | None) -> float | None:
    try:
        return None if text is None else float(text)
    except ValueError:
        return None


def describe_evidence(doc: dict[str, Any]) -> dict[str, Any]:
    """The verdict, test, suspect, key and control group an evidence document records.

    Nothing is re-checked here (``ownmark evidence check`` does that, with the key).

    Raises:
        EvidenceError: a section the format requires is missing or of the wrong type.
    """
    try:
        result, test, key, suspect = doc["result"], doc["test"], doc["key"], doc["suspect"]
        numbers = (float(result["p_value"]), float(test["p0"]), float(test["alpha"]))
        if not all(math.isfinite(x) for x in numbers):
            # json reads NaN and Infinity; ownmark never writes them, and --json cannot.
            raise ValueError(f"non-finite p-value, p0 or alpha {numbers}")
        control = doc.get("control")
        signature = doc.get("signature")
        return {
            "kind": "evidence",
            "format_version": doc.get("format_version"),
            "ownmark_version": doc.get("ownmark_version"),
            "verdict": result["verdict"],
            "p_value": float(result["p_value"]),
            "adjusted_p_value": result.get("adjusted_p_value"),
            "matches": result["matches"],
            "queries": result["queries"],
            "errors": result["errors"],
            "decoys": result["decoys"],
            "requests": result.get("requests"),
            "stop_reason": result.get("stop_reason"),
            "recorded_queries": len(doc.get("queries") or []),
            "suspect": {
                "address": suspect.get("address"),
                "protocol": suspect.get("protocol"),
                "transport": suspect.get("transport"),
                "first_seen": suspect.get("first_seen"),
            },
            "key": {
                "commitment": key["commitment"],
                "scheme": key.get("scheme"),
                "dataset": key.get("dataset"),
                "created": key.get("created"),
                "samples": key.get("samples"),
                "timestamp": bool(key.get("timestamp_token")),
            },
            "test": {
                "method": test.get("method"),
                "p0": float(test["p0"]),
                "alpha": float(test["alpha"]),
                "budget": test.get("budget"),
                "sequential": test.get("sequential"),
            },
            # ``passed`` is derived, not stored: recompute it as the verifier decides it.
            "control": None
            if control is None
            else {**control, "passed": ControlResult(**control).passed},
            "signed": signature is not None,
            "signer": signature.get("public_key") if isinstance(signature, dict) else None,
            "digest": doc.get("digest"),
            "started": doc.get("started"),
            "finished": doc.get("finished"),
            "written": doc.get("written"),
        }
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise EvidenceError(
            f"evidence file lacks or mangles a required field ({type(exc).__name__}: {exc})"
        ) from exc


def inspect_file(path: str | Path) -> dict[str, Any]:
    """Describe the key, model or evidence file at ``path`` (``kind`` says which).

    Raises:
        ConfigError: not one of the three kinds.
        KeyFileError, ModelFileError, EvidenceError: the file is of that kind but corrupt.
    """
    from ownmark.verify.evidence import load_evidence

    file = Path(path)
    kind = detect_kind(file)
    if kind == "key":
        info = describe_key(load_key(file))
    elif kind == "model":
        info = describe_model(file)
    else:
        try:
            info = describe_evidence(load_evidence(file))
        except EvidenceError as exc:
            # The messages of describe_evidence do not name the file; load_evidence's do.
            text = str(exc)
            raise EvidenceError(text if str(file) in text else f"{file}: {text}") from None
    return {"path": str(file), **info}
