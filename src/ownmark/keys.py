"""The watermark key: trigger images, their key labels, and a tamper-evident commitment.

A key file is a safetensors file. Its tensors are the trigger images (``uint8``, N×C×H×W),
their key labels (``int64``) and the clean originals they were made from (for previews);
its string metadata holds the scheme, its parameters, the data set, the class count, the
creation time, the random salt and the commitment::

    commitment = SHA-256(salt || canonical JSON of the metadata || every tensor's
                         name, dtype, shape and bytes)

Publishing only the commitment (e.g. with a time stamp) binds the owner to this exact key
without revealing it. :func:`load_key` recomputes the commitment and refuses a file that
was edited after it was created.
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
KEY_FORMAT_VERSION = "1"
_TENSOR_NAMES = ("images", "labels", "originals")

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
        params: the scheme's parameters (JSON-serialisable).
        dataset: description of the data set the key belongs to.
        num_classes: class count of the models the key is meant for.
        seed: seed the key was generated with.
        p0: upper bound on an independent model's per-query false-match rate.
        p0_source: where ``p0`` comes from (``"assumed"`` or a calibration description).
        created: ISO-8601 UTC creation time.
        salt: random hex salt mixed into the commitment.
    """

    images: torch.Tensor
    labels: torch.Tensor
    originals: torch.Tensor
    scheme: str
    params: dict[str, Any]
    dataset: str
    num_classes: int
    seed: int
    p0: float = UNCALIBRATED_P0
    p0_source: str = "assumed"
    created: str = field(
        default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds")
    )
    salt: str = field(default_factory=lambda: secrets.token_hex(16))

    def __post_init__(self) -> None:
        n = self.images.shape[0]
        if self.images.dtype != torch.uint8 or self.images.ndim != 4 or n == 0:
            raise ValueError("key images must be a non-empty uint8 tensor (N, C, H, W)")
        if self.labels.dtype != torch.int64 or self.labels.shape != (n,):
            raise ValueError(f"key labels must be int64 of shape ({n},)")
        if self.originals.shape != self.images.shape or self.originals.dtype != torch.uint8:
            raise ValueError("key originals must match the images' shape and dtype")
        if int(self.labels.min()) < 0 or int(self.labels.max()) >= self.num_classes:
            raise ValueError(f"key labels must lie in 0..{self.num_classes - 1}")
        if not 0.0 < self.p0 < 1.0:
            raise ValueError(f"p0 must lie strictly between 0 and 1, got {self.p0}")

    def __len__(self) -> int:
        return int(self.images.shape[0])

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
            "p0": repr(self.p0),
            "p0_source": self.p0_source,
            "created": self.created,
            "salt": self.salt,
        }

    def tensors(self) -> dict[str, torch.Tensor]:
        return {
            "images": self.images.contiguous(),
            "labels": self.labels.contiguous(),
            "originals": self.originals.contiguous(),
        }

    @property
    def commitment(self) -> str:
        """Hex SHA-256 commitment over salt, metadata and tensors."""
        return compute_commitment(self.metadata(), self.tensors())

    def select(self, indices: torch.Tensor) -> KeySet:
        """A copy holding only the samples at ``indices`` (a new commitment)."""
        return replace(
            self,
            images=self.images[indices].clone(),
            labels=self.labels[indices].clone(),
            originals=self.originals[indices].clone(),
        )

    def with_p0(self, p0: float, source: str) -> KeySet:
        """A copy with a new false-match bound (and therefore a new commitment)."""
        return replace(self, p0=p0, p0_source=source)


def compute_commitment(metadata: dict[str, str], tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 over the salt, the canonical metadata and each tensor's bytes."""
    digest = hashlib.sha256()
    digest.update(bytes.fromhex(metadata["salt"]))
    canonical = {k: v for k, v in metadata.items() if k != "commitment"}
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
    with atomic_path(path) as tmp:
        save_file(key.tensors(), str(tmp), metadata=metadata)
    return commitment


def load_key(path: str | Path) -> KeySet:
    """Read a key file, re-check its commitment, and return the key.

    Raises:
        KeyFileError: the file is missing, not a key file, corrupt, or was edited.
    """
    path = Path(path)
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
    stored = metadata.pop("commitment", "")
    metadata.pop("ownmark_version", None)
    if sorted(tensors) != sorted(_TENSOR_NAMES):
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
            images=tensors["images"],
            labels=tensors["labels"],
            originals=tensors["originals"],
            scheme=metadata["scheme"],
            params=json.loads(metadata["params"]),
            dataset=metadata["dataset"],
            num_classes=int(metadata["num_classes"]),
            seed=int(metadata["seed"]),
            p0=float(metadata["p0"]),
            p0_source=metadata["p0_source"],
            created=metadata["created"],
            salt=metadata["salt"],
        )
    except (KeyError, ValueError) as exc:
        raise KeyFileError(f"key file {path} has invalid contents ({exc})") from exc
