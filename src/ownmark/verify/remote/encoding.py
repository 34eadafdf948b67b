"""What goes on the wire: :class:`InputEncoding` (the tensor a model takes), :class:`WireFormat`
(every option of a remote suspect), label files, and a byte-exact PNG writer.

The verifier always holds uint8 N×C×H×W key images; a deployment may want FP32 pixels in
[0, 1], normalised per channel, channels last, or one flat vector per image. These options
say so, from the command line, instead of code. They are recorded in the evidence, and
``evidence check`` rebuilds the request bytes from the key images with them, so each
encoding here must be deterministic: the same images and options give the same bytes on any
machine (which is why PNGs are written here, uncompressed, rather than by Pillow's zlib).
"""

from __future__ import annotations

import json
import math
import struct
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from ownmark.errors import ConfigError

__all__ = [
    "DATATYPES",
    "LAYOUTS",
    "SCALES",
    "InputEncoding",
    "WireFormat",
    "png_bytes",
    "read_labels",
]

#: Tensor datatypes a v2 request can carry (Open Inference Protocol names).
DATATYPES: Final = ("UINT8", "FP32", "FP16")
#: ``none``: pixels 0..255 as they are; ``unit``: divided by 255, so in [0, 1].
SCALES: Final = ("none", "unit")
#: Channels first (PyTorch) or last (TensorFlow, most image APIs).
LAYOUTS: Final = ("NCHW", "NHWC")
_NUMPY_TYPES: Final = {"UINT8": np.uint8, "FP32": np.float32, "FP16": np.float16}


def _floats(name: str, values: Sequence[float]) -> tuple[float, ...]:
    out: list[float] = []
    for value in values:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{name} must be numbers, got {value!r}")
        if not math.isfinite(value):
            raise ConfigError(f"{name} must be finite numbers, got {value!r}")
        out.append(float(value))
    return tuple(out)


@dataclass(frozen=True)
class InputEncoding:
    """The tensor a remote model takes, made from the verifier's uint8 N×C×H×W images.

    Attributes:
        datatype: one of :data:`DATATYPES` (default "UINT8", what ``ownmark serve`` takes).
        scale: "none" (default: pixel values 0..255) or "unit" (divided by 255, in [0, 1]).
        mean, std: per-channel normalisation ``(x - mean) / std`` after scaling; one value
            for every channel or one per channel (default none). Needs a float datatype.
        layout: "NCHW" (default) or "NHWC".
        shape: the shape of one image as the model takes it, e.g. (1, 28, 28) or (784,)
            (default None: C×H×W in ``layout``). The images are reshaped to it (same number
            of values); a v2 model whose metadata lists no inputs is queried with it.

    Raises:
        ConfigError: an unknown value, or scaling or normalising UINT8 pixels.
    """

    datatype: str = "UINT8"
    scale: str = "none"
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    layout: str = "NCHW"
    shape: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if self.datatype not in DATATYPES:
            raise ConfigError(
                f"unknown input datatype {self.datatype!r}; choose one of {', '.join(DATATYPES)}"
            )
        if self.scale not in SCALES:
            raise ConfigError(f"unknown scale {self.scale!r}; choose one of {', '.join(SCALES)}")
        if self.layout not in LAYOUTS:
            raise ConfigError(f"unknown layout {self.layout!r}; choose one of {', '.join(LAYOUTS)}")
        mean, std = _floats("mean", self.mean), _floats("std", self.std)
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "std", std)
        if len(mean) != len(std):
            raise ConfigError(
                f"--mean has {len(mean)} values but --std has {len(std)}; give both, alike"
            )
        if any(s <= 0 for s in std):
            raise ConfigError(f"--std values must be positive, got {list(std)}")
        if self.datatype == "UINT8" and (self.scale != "none" or mean):
            raise ConfigError(
                "UINT8 carries raw pixels 0..255; scaling or normalising needs "
                "--input-datatype FP32 or FP16"
            )
        if self.shape is not None:
            shape = tuple(self.shape)
            if not shape or any(
                isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in shape
            ):
                raise ConfigError(
                    f"--input-shape must be positive sizes such as 1,28,28, got {self.shape!r}"
                )
            object.__setattr__(self, "shape", shape)

    @property
    def is_default(self) -> bool:
        """Raw uint8 pixels, channels first, unreshaped: what ``ownmark serve`` takes."""
        return self == InputEncoding()

    def image_shape(self, chw: Sequence[int]) -> tuple[int, ...]:
        """The shape one image of shape ``chw`` (C, H, W) is sent in.

        Raises:
            ConfigError: ``shape`` holds another number of values, or mean/std do not fit C.
        """
        c, h, w = (int(d) for d in chw)
        if len(self.mean) not in (0, 1, c):
            raise ConfigError(
                f"--mean/--std give {len(self.mean)} values but the images have {c} channels; "
                f"give 1 or {c}"
            )
        natural = (c, h, w) if self.layout == "NCHW" else (h, w, c)
        if self.shape is None:
            return natural
        if math.prod(self.shape) != c * h * w:
            wanted = ",".join(str(d) for d in natural)
            raise ConfigError(
                f"--input-shape {','.join(map(str, self.shape))} holds "
                f"{math.prod(self.shape)} values but the key's images have {c * h * w} "
                f"({c}×{h}×{w}); use e.g. --input-shape {wanted}"
            )
        return self.shape

    def encode(self, batch: npt.NDArray[np.uint8]) -> npt.NDArray[Any]:
        """The tensor for uint8 images ``batch`` (N×C×H×W): N × :meth:`image_shape`."""
        shape = (int(batch.shape[0]), *self.image_shape(batch.shape[1:]))
        if self.datatype == "UINT8":
            out: npt.NDArray[Any] = batch
        else:
            # float32 arithmetic first (IEEE, so the same on every machine), then FP16 if asked.
            out = batch.astype(np.float32)
            if self.scale == "unit":
                out = out / np.float32(255.0)
            if self.mean:
                channels = int(batch.shape[1])
                mean = np.array(self.mean * (channels if len(self.mean) == 1 else 1), np.float32)
                std = np.array(self.std * (channels if len(self.std) == 1 else 1), np.float32)
                out = (out - mean[None, :, None, None]) / std[None, :, None, None]
            out = out.astype(_NUMPY_TYPES[self.datatype])
        if self.layout == "NHWC":
            out = out.transpose(0, 2, 3, 1)
        return np.ascontiguousarray(out).reshape(shape)

    def to_dict(self) -> dict[str, Any]:
        return {
            "datatype": self.datatype,
            "scale": self.scale,
            "mean": list(self.mean),
            "std": list(self.std),
            "layout": self.layout,
            "shape": None if self.shape is None else list(self.shape),
        }

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> InputEncoding:
        shape = doc.get("shape")
        return cls(
            datatype=str(doc.get("datatype", "UINT8")),
            scale=str(doc.get("scale", "none")),
            mean=tuple(doc.get("mean", ())),
            std=tuple(doc.get("std", ())),
            layout=str(doc.get("layout", "NCHW")),
            shape=None if shape is None else tuple(shape),
        )


@dataclass(frozen=True)
class WireFormat:
    """Every option of a remote suspect that the command line sets (all recorded in evidence).

    Attributes:
        encoding: the input tensor (default :class:`InputEncoding`: raw uint8, NCHW).
        input_name: the v2 input tensor's name (default "images"; MLServer: often "input-0").
        output_name: the v2 output that holds the prediction (default None: found by name
            and type, see :func:`~ownmark.verify.remote.v2.parse_v2_response`).
        answer: which kind of v2 output holds the prediction (default "auto").
        max_batch: most images in one HTTP request (default None: each query of the
            verifier, ``--batch`` images, is one request); a query is split into requests of
            at most this many images.
        labels: class names, index = class (default None); answers that name a class are
            mapped through it, and a name not in it is an invalid answer, never a match.
    """

    encoding: InputEncoding = field(default_factory=InputEncoding)
    input_name: str = "images"
    output_name: str | None = None
    answer: str = "auto"
    max_batch: int | None = None
    labels: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.encoding, InputEncoding):
            raise ConfigError(
                f"encoding must be an InputEncoding, got {type(self.encoding).__name__}"
            )
        if not isinstance(self.input_name, str) or not self.input_name:
            raise ConfigError(f"the input name must be non-empty, got {self.input_name!r}")
        if self.output_name is not None and (
            not isinstance(self.output_name, str) or not self.output_name
        ):
            raise ConfigError(f"the output name must be non-empty, got {self.output_name!r}")
        if self.max_batch is not None and (
            isinstance(self.max_batch, bool) or not isinstance(self.max_batch, int)
        ):
            raise ConfigError(f"--max-batch must be a whole number, got {self.max_batch!r}")
        if self.max_batch is not None and self.max_batch < 1:
            raise ConfigError(f"--max-batch must be at least 1, got {self.max_batch}")
        if self.labels is not None:
            object.__setattr__(self, "labels", _check_labels(self.labels, "the labels"))

    def label_index(self) -> dict[str, int] | None:
        """Name -> class index, or None without labels."""
        return None if self.labels is None else {n: i for i, n in enumerate(self.labels)}


def _check_labels(names: Sequence[object], source: str) -> tuple[str, ...]:
    labels = tuple(names)
    if len(labels) < 2:
        raise ConfigError(f"{source} name {len(labels)} classes; a classifier has 2 or more")
    seen: dict[str, int] = {}
    for index, name in enumerate(labels):
        if not isinstance(name, str) or not name.strip():
            raise ConfigError(f"{source}: class {index} has no name (an empty line?)")
        if name in seen:
            raise ConfigError(
                f"{source}: {name!r} names classes {seen[name]} and {index}; names must be unique"
            )
        seen[name] = index
    return tuple(str(n) for n in labels)


def read_labels(path: str | Path) -> tuple[str, ...]:
    """Class names from a labels file: index = class.

    A text file has one name per line (line 1 is class 0; trailing blank lines are ignored).
    A ``.json`` file is TorchServe's ``index_to_name.json``: ``{"0": "cat", ...}`` or
    ``{"0": ["n02123045", "tabby"], ...}`` (the last entry is the name answers use).

    Raises:
        ConfigError: the file is missing or unreadable, a class has no name, a name is
            repeated, or the indices of a JSON file are not 0..K-1.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise ConfigError(f"labels file {path} does not exist") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read labels file {path} ({type(exc).__name__})") from exc
    source = f"labels file {path}"
    if path.suffix.lower() != ".json":
        return _check_labels([line.strip() for line in text.rstrip().splitlines()], source)
    try:
        raw = json.loads(text)
    except ValueError as exc:
        raise ConfigError(f"{source} is not valid JSON ({exc})") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{source} must be a JSON object of index -> name")
    if sorted(raw) != sorted(str(i) for i in range(len(raw))):
        raise ConfigError(f"{source} must have the indices 0..{len(raw) - 1} as its keys")
    names: list[object] = []
    for i in range(len(raw)):
        value = raw[str(i)]
        if isinstance(value, list) and value:
            value = value[-1]
        names.append(value)
    return _check_labels(names, source)


def _chunk(data: bytes, kind: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _stored_deflate(raw: bytes) -> bytes:
    """``raw`` in a zlib stream of stored (uncompressed) blocks: byte-exact on any machine."""
    out = bytearray(b"\x78\x01")
    step = 0xFFFF
    for start in range(0, max(len(raw), 1), step):
        part = raw[start : start + step]
        last = start + step >= len(raw)
        out += bytes([1 if last else 0]) + struct.pack("<HH", len(part), len(part) ^ 0xFFFF)
        out += part
    out += struct.pack(">I", zlib.adler32(raw))
    return bytes(out)


def png_bytes(image: npt.NDArray[np.uint8]) -> bytes:
    """One uint8 C×H×W image as a PNG (gray for 1 channel, RGB for 3, RGBA for 4).

    Written here, uncompressed, so that the bytes depend on the pixels alone (a zlib that
    compresses differently would change the bytes, and ``evidence check`` compares them).

    Raises:
        ConfigError: the image does not have 1, 3 or 4 channels.
    """
    channels, height, width = (int(d) for d in image.shape)
    colour = {1: 0, 3: 2, 4: 6}.get(channels)
    if colour is None:
        raise ConfigError(
            f"a PNG needs images with 1, 3 or 4 channels, got {channels}; use the nested or "
            "flat encoding"
        )
    pixels = np.ascontiguousarray(image.transpose(1, 2, 0), dtype=np.uint8)
    rows = b"".join(b"\x00" + pixels[y].tobytes() for y in range(height))  # filter 0: none
    header = struct.pack(">IIBBBBB", width, height, 8, colour, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(header, b"IHDR")
        + _chunk(_stored_deflate(rows), b"IDAT")
        + _chunk(b"", b"IEND")
    )
