"""The watermark key: trigger images, their key labels, and a tamper-evident commitment.

A key file is a safetensors file. Its tensors are the trigger images (``uint8``, N×C×H×W),
their key labels (``int64``), the clean originals they were made from (for previews), and a
control group of ordinary images (``decoys``) with their true labels and the key label a
model would give them if it answered the trigger's label regardless of the trigger; its
string metadata holds the scheme, its parameters, the data set, the class count, the
creation time, the random salt, the verification plan (alpha, budget), the SHA-256 of the
watermarked model released with the key, and the commitment::

    commitment = SHA-256(salt || canonical JSON of the metadata || every tensor's
                         name, dtype, shape and bytes)

Publishing only the commitment binds the owner to this exact key without revealing it, but
the commitment itself says nothing about *when* the key existed (its ``created`` field is
self-declared). An RFC 3161 time-stamp token over the commitment (:mod:`ownmark.timestamp`)
does; it is stored beside the commitment (``timestamp_token``), outside what it covers.
:func:`load_key` recomputes the commitment and refuses a file that was edited after it was
created.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from ownmark import __version__
from ownmark.errors import KeyFileError
from ownmark.fileio import atomic_path

KEY_FORMAT = "ownmark-key"
KEY_FORMAT_VERSION = "2"
_TENSOR_NAMES = ("images", "labels", "originals", "decoys", "decoy_labels", "decoy_key_labels")
#: Name prefix of the scheme's own tensors (``KeySet.extra``) in a key file.
EXTRA_PREFIX = "extra."
#: Metadata outside the commitment: what is attached to a key after it was committed.
_UNCOMMITTED = ("commitment", "ownmark_version", "timestamp_token")

#: Default verification plan a key fixes (alpha, key-query budget): fixed at keygen so a
#: verifier does not pick them after seeing answers.
DEFAULT_ALPHA = 1e-6
DEFAULT_MAX_QUERIES = 100

#: The false-match rate assumed for a key that was not calibrated on reference models: an
#: independent model is taken to give the key label at most this often. Deliberately
#: pessimistic (the paper's clean models match ~10%), so an uncalibrated verdict errs
#: towards "not owned".
UNCALIBRATED_P0 = 0.5


@dataclass(frozen=True, eq=False)
class KeySet:
    """Trigger images and the labels a watermarked model gives them.

    Attributes:
        images: ``uint8`` (N, C, H, W) trigger images, exactly what is sent to a suspect.
        labels: ``int64`` (N,) key labels.
        originals: ``uint8`` (N, C, H, W) the clean images the triggers were made from.
        scheme: registered scheme name that made the key.
        params: the scheme's parameters as resolved, secrets included (JSON-serialisable).
        dataset: description of the data set the key belongs to.
        num_classes: class count of the models the key is meant for.
        seed: seed the key was generated with (a fresh secret unless one was given).
        decoys: ``uint8`` (M, C, H, W) ordinary images of the key's source classes, the
            control group mixed into every verification request.
        decoy_labels: ``int64`` (M,) their true labels.
        decoy_key_labels: ``int64`` (M,) the key label each decoy would get if a model gave
            the key's answer to every image of its class (trigger or not).
        seed_source: ``"secret"`` (drawn from :mod:`secrets`) or ``"given"`` (reproducible
            experiments: anyone who knows the seed and the parameters can remake the key).
        p0: upper bound on an independent model's per-query false-match rate.
        p0_source: where ``p0`` comes from (``"assumed"`` or a calibration description).
        alpha: the false-claim rate the key's verifications use by default.
        max_queries: the key-query budget its verifications use by default.
        released_model_sha256: SHA-256 of the watermarked model file released with the key
            (set by ``ownmark embed``), so the commitment binds that model.
        created: ISO-8601 UTC creation time (self-declared: see ``timestamp_token``).
        salt: random hex salt mixed into the commitment.
        timestamp_token: base64 RFC 3161 token over the commitment ("" if none); not covered
            by the commitment (it is made from it).
        extra_classes: outputs a host model has beyond ``num_classes`` (a new-label key's
            extra class); key labels lie in ``0..model_classes - 1``.
        extra: the scheme's learned parts and secrets (an encoder's weights, a noise pattern),
            stored as ``extra.<name>`` tensors under the commitment, never in a model file.
    """

    images: torch.Tensor
    labels: torch.Tensor
    originals: torch.Tensor
    scheme: str
    params: dict[str, Any]
    dataset: str
    num_classes: int
    seed: int
    decoys: torch.Tensor
    decoy_labels: torch.Tensor
    decoy_key_labels: torch.Tensor
    seed_source: str = "secret"
    p0: float = UNCALIBRATED_P0
    p0_source: str = "assumed"
    alpha: float = DEFAULT_ALPHA
    max_queries: int = DEFAULT_MAX_QUERIES
    released_model_sha256: str = ""
    created: str = field(
        default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds")
    )
    salt: str = field(default_factory=lambda: secrets.token_hex(16))
    timestamp_token: str = ""
    extra_classes: int = 0
    extra: dict[str, torch.Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = self.images.shape[0]
        if self.images.dtype != torch.uint8 or self.images.ndim != 4 or n == 0:
            raise ValueError("key images must be a non-empty uint8 tensor (N, C, H, W)")
        if self.labels.dtype != torch.int64 or self.labels.shape != (n,):
            raise ValueError(f"key labels must be int64 of shape ({n},)")
        if self.originals.shape != self.images.shape or self.originals.dtype != torch.uint8:
            raise ValueError("key originals must match the images' shape and dtype")
        if self.extra_classes < 0:
            raise ValueError(f"extra_classes must be >= 0, got {self.extra_classes}")
        if int(self.labels.min()) < 0 or int(self.labels.max()) >= self.model_classes:
            raise ValueError(f"key labels must lie in 0..{self.model_classes - 1}")
        if not 0.0 < self.p0 < 1.0:
            raise ValueError(f"p0 must lie strictly between 0 and 1, got {self.p0}")
        m = self.decoys.shape[0] if self.decoys.ndim == 4 else -1
        if self.decoys.dtype != torch.uint8 or self.decoys.shape[1:] != self.images.shape[1:]:
            raise ValueError("key decoys must be uint8 images shaped like the key images")
        for name in ("decoy_labels", "decoy_key_labels"):
            labels = getattr(self, name)
            if labels.dtype != torch.int64 or labels.shape != (m,):
                raise ValueError(f"key {name} must be int64 of shape ({m},)")
            if m and (int(labels.min()) < 0 or int(labels.max()) >= self.model_classes):
                raise ValueError(f"key {name} must lie in 0..{self.model_classes - 1}")
        if self.seed_source not in ("secret", "given"):
            raise ValueError(f"seed_source must be 'secret' or 'given', got {self.seed_source!r}")
        if not 0.0 < self.alpha < 1.0 or self.max_queries < 1:
            raise ValueError("a key's plan needs 0 < alpha < 1 and max_queries >= 1")

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def model_classes(self) -> int:
        """Outputs of a model that carries this key: the data's classes plus the scheme's."""
        return self.num_classes + self.extra_classes

    @property
    def image_shape(self) -> tuple[int, int, int]:
        c, h, w = self.images.shape[1:]
        return int(c), int(h), int(w)

    def metadata(self) -> dict[str, str]:
        """String metadata stored in the file (everything but the commitment)."""
        return {
            "format": KEY_FORMAT,
            "format_version": KEY_FORMAT_VERSION,
            "scheme": self.scheme,
            "params": json.dumps(self.params, sort_keys=True),
            "dataset": self.dataset,
            "num_classes": str(self.num_classes),
            "image_shape": json.dumps(list(self.image_shape)),
            "seed": str(self.seed),
            "seed_source": self.seed_source,
            "p0": repr(self.p0),
            "p0_source": self.p0_source,
            "alpha": repr(self.alpha),
            "max_queries": str(self.max_queries),
            "released_model_sha256": self.released_model_sha256,
            "created": self.created,
            "salt": self.salt,
            # Only when set, so keys without extra classes keep their commitments.
            **({"extra_classes": str(self.extra_classes)} if self.extra_classes else {}),
        }

    def tensors(self) -> dict[str, torch.Tensor]:
        out = {name: getattr(self, name).contiguous() for name in _TENSOR_NAMES}
        out.update({f"{EXTRA_PREFIX}{name}": t.contiguous() for name, t in self.extra.items()})
        return out

    @property
    def commitment(self) -> str:
        """Hex SHA-256 commitment over salt, metadata and tensors."""
        return compute_commitment(self.metadata(), self.tensors())

    def select(self, indices: torch.Tensor) -> KeySet:
        """A copy holding only the samples at ``indices`` (a new commitment, so no time stamp)."""
        return replace(
            self,
            images=self.images[indices].clone(),
            labels=self.labels[indices].clone(),
            originals=self.originals[indices].clone(),
            timestamp_token="",
        )

    def with_p0(self, p0: float, source: str) -> KeySet:
        """A copy with a new false-match bound (and therefore a new commitment)."""
        return replace(self, p0=p0, p0_source=source, timestamp_token="")

    def bound_to_model(self, model_file: str | Path) -> KeySet:
        """A copy whose commitment binds the released watermarked model file (its SHA-256).

        The commitment changes, so an earlier time stamp no longer covers it (it is dropped):
        time-stamp the returned key.
        """
        return replace(self, released_model_sha256=file_sha256(model_file), timestamp_token="")

    def with_timestamp(self, token: str) -> KeySet:
        """A copy carrying an RFC 3161 token (base64) over its commitment."""
        return replace(self, timestamp_token=token)


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def compute_commitment(metadata: dict[str, str], tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 over the salt, the canonical metadata and each tensor's bytes."""
    digest = hashlib.sha256()
    digest.update(bytes.fromhex(metadata["salt"]))
    canonical = {k: v for k, v in metadata.items() if k not in _UNCOMMITTED}
    digest.update(json.dumps(canonical, sort_keys=True, separators=(",", ":")).encode())
    for name in sorted(tensors):
        tensor = tensors[name].contiguous().cpu()
        digest.update(f"{name}|{tensor.dtype}|{list(tensor.shape)}|".encode())
        digest.update(tensor.numpy().tobytes())
    return digest.hexdigest()


def save_key(key: KeySet, path: str | Path) -> str:
    """Write ``key`` to ``path`` atomically and return its commitment."""
    metadata = key.metadata()
    commitment = compute_commitment(metadata, key.tensors())
    metadata["commitment"] = commitment
    metadata["ownmark_version"] = __version__
    if key.timestamp_token:
        metadata["timestamp_token"] = key.timestamp_token
    with atomic_path(path) as tmp:
        save_file(key.tensors(), str(tmp), metadata=metadata)
    return commitment


def load_key(path: str | Path) -> KeySet:
    """Read a key file, re-check its commitment, and return the key.

    Raises:
        KeyFileError: the file is missing, not a key file, corrupt, or was edited.
    """
    path = Path(path)
    if path.is_dir():
        raise KeyFileError(f"{path} is a folder, not a key file; give the key's .safetensors file")
    if not path.is_file():
        raise KeyFileError(f"key file not found: {path}; create one with 'ownmark keygen'")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = dict(handle.metadata() or {})
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118
    except (SafetensorError, OSError, ValueError) as exc:
        raise KeyFileError(f"key file {path} is corrupt or not a safetensors file ({exc})") from exc
    if metadata.get("format") != KEY_FORMAT:
        raise KeyFileError(f"{path} is not an ownmark key file (no '{KEY_FORMAT}' format tag)")
    if metadata.get("format_version") != KEY_FORMAT_VERSION:
        raise KeyFileError(
            f"{path} is a version {metadata.get('format_version')} key file; this ownmark reads "
            f"version {KEY_FORMAT_VERSION} (owner secrets, decoys, a fixed plan): make a new key "
            "with 'ownmark keygen'"
        )
    stored = metadata.pop("commitment", "")
    metadata.pop("ownmark_version", None)
    token = metadata.pop("timestamp_token", "")
    extra = {n[len(EXTRA_PREFIX) :]: t for n, t in tensors.items() if n.startswith(EXTRA_PREFIX)}
    if sorted(n for n in tensors if not n.startswith(EXTRA_PREFIX)) != sorted(_TENSOR_NAMES):
        raise KeyFileError(f"key file {path} lacks tensors {sorted(_TENSOR_NAMES)}")
    try:
        actual = compute_commitment(metadata, tensors)
    except (KeyError, ValueError) as exc:
        raise KeyFileError(f"key file {path} has corrupt metadata ({exc})") from exc
    if actual != stored:
        raise KeyFileError(
            f"key file {path} was modified after it was created (commitment mismatch); "
            "use the original file or generate a new key with 'ownmark keygen'"
        )
    try:
        return KeySet(
            **{name: tensors[name] for name in _TENSOR_NAMES},
            scheme=metadata["scheme"],
            params=json.loads(metadata["params"]),
            dataset=metadata["dataset"],
            num_classes=int(metadata["num_classes"]),
            seed=int(metadata["seed"]),
            seed_source=metadata["seed_source"],
            p0=float(metadata["p0"]),
            p0_source=metadata["p0_source"],
            alpha=float(metadata["alpha"]),
            max_queries=int(metadata["max_queries"]),
            released_model_sha256=metadata["released_model_sha256"],
            created=metadata["created"],
            salt=metadata["salt"],
            timestamp_token=token,
            extra_classes=int(metadata.get("extra_classes", "0")),
            extra=extra,
        )
    except (KeyError, ValueError) as exc:
        raise KeyFileError(f"key file {path} has invalid contents ({exc})") from exc
