"""The Open Inference Protocol (KServe v2): :class:`V2Suspect` and its answer parser.

Spoken by ``ownmark serve``, Triton, KServe and MLServer. :func:`parse_v2_response` picks the
output that holds the prediction (labels, top-k labels or a score matrix) and cross-checks it
against the other outputs of the same answer; :class:`V2Suspect` builds the URLs from a
server or model address, encodes the images as the deployment wants them (datatype, scaling,
normalisation, layout, shape: :class:`~ownmark.verify.remote.encoding.WireFormat`), sends
infer requests and checks the model's declared input.
"""

from __future__ import annotations

import math
import re
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, Final
from urllib.parse import quote

import httpx
import numpy as np
import numpy.typing as npt
import torch

from ownmark.errors import ConfigError
from ownmark.verify.remote.answers import Answer, _as_label, _score_rows, _top_labels
from ownmark.verify.remote.base import (
    _check_url,
    _check_wire,
    _chunks,
    _HttpSuspect,
    _model_from_url,
)
from ownmark.verify.remote.encoding import WireFormat
from ownmark.verify.remote.policy import _DEFAULT_POLICY, HttpPolicy
from ownmark.verify.remote.transport import Clock, QueryError, Sleep, _one_line, json_bytes
from ownmark.verify.suspects import InvalidAnswer, labels_from_scores

__all__ = ["ANSWER_KINDS", "V2Suspect", "parse_v2_response", "v2_bodies"]

#: Which output of a v2 answer holds the prediction (see :func:`parse_v2_response`).
ANSWER_KINDS: Final = ("auto", "label", "topk", "probabilities")

_INT_TYPES = frozenset({"INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64"})
_FLOAT_TYPES = frozenset({"FP16", "BF16", "FP32", "FP64"})
_LABEL_NAMES = frozenset({"label", "labels"})


@dataclass(frozen=True)
class _Output:
    """One output tensor of a v2 answer, its data flattened."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    data: list[object]

    def describe(self) -> str:
        return f"{self.name} {list(self.shape)}"


def _flatten(value: object, where: str) -> list[object]:
    """Flatten nested lists without recursion (a hostile answer may nest very deep)."""
    if not isinstance(value, list):
        raise QueryError(f"{where} has no 'data' list")
    flat: list[object] = []
    stack = [iter(value)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                stack.append(iter(item))
                break
            flat.append(item)
        else:
            stack.pop()
    return flat


def _parse_outputs(payload: object, request_id: str | None) -> list[_Output]:
    if not isinstance(payload, dict):
        raise QueryError(f"the answer is a JSON {_json_kind(payload)}, not an object")
    if payload.get("error") not in (None, ""):
        raise QueryError(f"the server answered an error: {_one_line(payload['error'])}")
    answered_id = payload.get("id")
    if request_id is not None and answered_id is not None and answered_id != request_id:
        raise QueryError(
            f"the answer is for request {_one_line(answered_id, 60)!r}, not {request_id!r}"
        )
    raw_outputs = payload.get("outputs")
    if not isinstance(raw_outputs, list):
        raise QueryError("the answer has no 'outputs' list")
    outputs: list[_Output] = []
    for index, raw in enumerate(raw_outputs):
        where = f"output {index}"
        if not isinstance(raw, dict):
            raise QueryError(f"{where} is not a JSON object")
        name, datatype, shape = raw.get("name"), raw.get("datatype"), raw.get("shape")
        if not isinstance(name, str):
            raise QueryError(f"{where} has no name")
        where = f"output {_one_line(name, 40)!r}"
        if not isinstance(datatype, str):
            raise QueryError(f"{where} has no datatype")
        if not (
            isinstance(shape, list)
            and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
        ):
            raise QueryError(f"{where} has no valid shape (a list of sizes)")
        data = _flatten(raw.get("data"), where)
        if len(data) != math.prod(shape):
            raise QueryError(f"{where} has shape {shape} but {len(data)} values")
        outputs.append(_Output(name, datatype.upper(), tuple(shape), data))
    return outputs


def _json_kind(value: object) -> str:
    if isinstance(value, list):
        return "list"
    if isinstance(value, str):
        return "string"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    return "number"


def _candidates(outputs: Sequence[_Output], kind: str) -> list[_Output]:
    """Outputs that could hold ``kind`` answers: by conventional name first, else by type."""
    if kind == "label":
        named = [o for o in outputs if o.name.lower() in _LABEL_NAMES]
        return named or [
            o
            for o in outputs
            if o.datatype in _INT_TYPES
            and not o.name.lower().startswith("topk")
            and (len(o.shape) == 1 or (len(o.shape) == 2 and o.shape[1] == 1))
        ]
    if kind == "topk":
        return [o for o in outputs if o.name.lower() == "topk_labels"]
    named = [o for o in outputs if o.name.lower() == "probabilities"]
    # topk_scores is [N, k] floats too, but its argmax is a rank, not a class.
    return named or [
        o
        for o in outputs
        if o.datatype in _FLOAT_TYPES
        and not o.name.lower().startswith("topk")
        and len(o.shape) == 2
        and o.shape[1] >= 2
    ]


_KIND_WORDS: Final = {"label": "labels", "topk": "top-k labels", "probabilities": "probabilities"}


def _rows(output: _Output, count: int) -> list[list[object]]:
    width = output.shape[1]
    return [output.data[i * width : (i + 1) * width] for i in range(count)]


def _decode(kind: str, output: _Output, count: int) -> list[Answer]:
    where = f"output {_one_line(output.name, 40)!r}"
    shape = output.shape
    if kind == "label":
        if not (len(shape) == 1 or (len(shape) == 2 and shape[1] == 1)):
            raise QueryError(f"{where} has shape {list(shape)}; expected [{count}] labels")
        if shape[0] != count:
            raise QueryError(f"expected {count} labels, got {shape[0]}")
        return [_as_label(v, f"a label in {where}") for v in output.data]
    if len(shape) != 2 or shape[1] < 1:
        raise QueryError(f"{where} has shape {list(shape)}; expected [{count}, k]")
    if shape[0] != count:
        raise QueryError(f"expected {count} rows in {where}, got {shape[0]}")
    width = shape[1]
    if kind == "probabilities" and width < 2:
        raise QueryError(f"{where} has 1 score per image; an argmax needs 2 or more")
    if kind == "topk":
        return [_as_label(output.data[i * width], f"a label in {where}") for i in range(count)]
    return _top_labels(_rows(output, count), lambda i: f"row {i} of {where}")


def _companion_claims(output: _Output, count: int) -> list[Answer | None] | None:
    """What another output of the answer says about each image's label, if it says anything.

    ``label``/``labels`` [N] and the first column of ``topk_labels`` [N, k] name a label;
    ``probabilities`` [N, K] names its argmax (or InvalidAnswer); ``topk_scores`` [N, k] must
    rank its first entry strictly highest (else InvalidAnswer) and says nothing more (None).
    Outputs of another shape or name say nothing (None for the whole output).
    """
    name, shape = output.name.lower(), output.shape
    where = f"output {_one_line(output.name, 40)!r}"
    if not shape or shape[0] != count:
        return None
    if name in _LABEL_NAMES and (len(shape) == 1 or (len(shape) == 2 and shape[1] == 1)):
        return [_as_label(v, f"a label in {where}") for v in output.data]
    if len(shape) != 2 or shape[1] < 1:
        return None
    width = shape[1]
    if name == "topk_labels":
        return [_as_label(output.data[i * width], f"a label in {where}") for i in range(count)]
    if name == "probabilities" and width >= 2:
        return list(_top_labels(_rows(output, count), lambda i: f"row {i} of {where}"))
    if name != "topk_scores":
        return None
    scores = _score_rows(_rows(output, count), lambda i: f"row {i} of {where}")
    if width == 1:
        return [
            None if bool(torch.isfinite(row).all()) else InvalidAnswer("non-finite scores")
            for row in scores
        ]
    ranked: list[Answer | None] = []
    for claim in labels_from_scores(scores):
        if isinstance(claim, InvalidAnswer):
            ranked.append(claim)
        elif claim != 0:
            ranked.append(InvalidAnswer("the top-k scores do not rank the first label highest"))
        else:
            ranked.append(None)
    return ranked


def _screen(answers: list[Answer], chosen: _Output, outputs: Sequence[_Output]) -> list[Answer]:
    """Labels checked against the other outputs of the same answer.

    A server that answers a label and, beside it, scores that tie for the top (or NaN) broke
    the tie itself; a label that disagrees with its own top-k list or probabilities is
    ambiguous. Either way that image's label is not taken (InvalidAnswer).
    """
    count = len(answers)
    screened = list(answers)
    for output in outputs:
        if output is chosen:
            continue
        claims = _companion_claims(output, count)
        if claims is None:
            continue
        for i, claim in enumerate(claims):
            if claim is None or not isinstance(screened[i], int):
                continue
            if isinstance(claim, InvalidAnswer):
                screened[i] = claim
            elif claim != screened[i]:
                screened[i] = InvalidAnswer(
                    f"the answer's outputs disagree ({_one_line(output.name, 40)!r} says "
                    f"{claim}, not {screened[i]})"
                )
    return screened


def _named_kind(output: _Output, answer: str) -> str:
    """The kind of a named output: ``answer``, or under "auto" what its type and shape say."""
    if answer != "auto":
        return answer
    shape = output.shape
    if output.datatype in _INT_TYPES and (len(shape) == 1 or (len(shape) == 2 and shape[1] == 1)):
        return "label"
    if output.name.lower() == "topk_labels":
        return "topk"
    if output.datatype in _FLOAT_TYPES and len(shape) == 2 and shape[1] >= 2:
        return "probabilities"
    raise QueryError(
        f"output {_one_line(output.name, 40)!r} is {output.datatype} {list(shape)}, neither "
        "integer labels [N] nor scores [N, K]; pass --answer label, topk or probabilities"
    )


def parse_v2_response(
    payload: object,
    count: int,
    answer: str = "auto",
    *,
    request_id: str | None = None,
    output_name: str | None = None,
) -> list[Answer]:
    """The ``count`` labels in an Open Inference Protocol answer (decoded JSON).

    ``answer`` picks the output (default "auto"):

    * "label": an integer output named ``label`` (or, when none is, the only integer output
      of shape [N] or [N, 1], e.g. Triton's ``OUTPUT__0``);
    * "topk": the first column of ``topk_labels`` [N, k];
    * "probabilities": the argmax of ``probabilities`` [N, K] (or of the only float output
      of shape [N, K], K >= 2, e.g. ``logits``);
    * "auto": the first of these three that the answer has.

    ``output_name``, when given, names the output to read (default None: found as above);
    under "auto" its kind follows from its type and shape (integers [N]: labels; floats
    [N, K]: scores). Data may be flat or nested. ``request_id``, when given, must match the
    answer's ``id`` if it has one.

    An image gets an :class:`~ownmark.verify.suspects.InvalidAnswer` instead of a label when
    its scores name no class: a row of probabilities whose top score is tied (uniform
    probabilities included) or that holds NaN or ±inf (JSON ``NaN``, ``Infinity``, or a
    number too large for a float). A label or top-k answer is also cross-checked against the
    other outputs the answer carries (``label``, ``topk_labels``, ``topk_scores``,
    ``probabilities``): scores beside it that tie for the top or are not finite, or an output
    that names another label, make that image's answer invalid too. The verifier records an
    InvalidAnswer as a failed query, never a match.

    Raises:
        QueryError: the answer is malformed, lacks the output, has the wrong number of
            answers or non-integer labels.
    """
    if answer not in ANSWER_KINDS:
        raise ConfigError(
            f"unknown answer kind {answer!r}; choose one of {', '.join(ANSWER_KINDS)}"
        )
    outputs = _parse_outputs(payload, request_id)
    if output_name is not None:
        named = [o for o in outputs if o.name == output_name]
        if len(named) != 1:
            described = ", ".join(o.describe() for o in outputs) or "no outputs"
            how = "several outputs" if named else "no output"
            raise QueryError(
                f"the answer has {how} named {_one_line(output_name, 40)!r} "
                f"(outputs: {_one_line(described)}); check --output-name"
            )
        kind = _named_kind(named[0], answer)
        answers = _decode(kind, named[0], count)
        return answers if kind == "probabilities" else _screen(answers, named[0], outputs)
    kinds = ("label", "topk", "probabilities") if answer == "auto" else (answer,)
    for kind in kinds:
        found = _candidates(outputs, kind)
        if len(found) > 1:
            names = ", ".join(o.describe() for o in found)
            raise QueryError(
                f"the API answers several possible {_KIND_WORDS[kind]} ({names}); "
                "cannot tell which one is the prediction"
            )
        if found:
            answers = _decode(kind, found[0], count)
            return answers if kind == "probabilities" else _screen(answers, found[0], outputs)
    described = ", ".join(o.describe() for o in outputs) or "no outputs"
    if answer == "auto":
        raise QueryError(
            f"the API answers {_one_line(described)}, none of which is labels, "
            "top-k labels or a score matrix"
        )
    usable = [k for k in ("label", "topk", "probabilities") if _candidates(outputs, k)]
    alternative = f" or --answer {usable[0]}" if usable else ""
    raise QueryError(
        f"the API answers {_one_line(described)} but {_KIND_WORDS[answer]} were expected; "
        f"rerun with --answer auto{alternative}"
    )


_MODEL_PATH = re.compile(
    r"(?P<prefix>.*?)/v2/models/(?P<name>[^/]+)(?:/versions/(?P<version>[^/]+))?(?:/infer)?"
)


def v2_bodies(
    batch: npt.NDArray[np.uint8], wire: WireFormat, request_ids: Sequence[str]
) -> list[bytes]:
    """The infer request bodies for uint8 images ``batch``, one per ``wire.max_batch`` images
    (the ``i``-th with id ``request_ids[i]``): what :class:`V2Suspect` sends and
    ``evidence check`` rebuilds.

    Raises:
        ConfigError: ``request_ids`` does not give one id per request, or the encoding does
            not fit the images.
    """
    spans = _chunks(int(batch.shape[0]), wire.max_batch)
    if len(request_ids) != len(spans):
        raise ConfigError(f"{len(spans)} requests need {len(spans)} ids, got {len(request_ids)}")
    tensor = wire.encoding.encode(batch)
    bodies = []
    for (start, stop), request_id in zip(spans, request_ids, strict=True):
        part = tensor[start:stop]
        body = {
            "id": request_id,
            "inputs": [
                {
                    "name": wire.input_name,
                    "shape": list(part.shape),
                    "datatype": wire.encoding.datatype,
                    "data": part.reshape(-1).tolist(),
                }
            ],
        }
        bodies.append(json_bytes(body))
    return bodies


class V2Suspect(_HttpSuspect):
    """A suspect behind an Open Inference Protocol (KServe v2) API.

    Args:
        url: the server ("http://host:port", with ``model``) or the model's URL
            ("http://host:port/v2/models/NAME", optionally ending in "/versions/V" or "/infer").
        model: the model name, when ``url`` does not name it (default None).
        policy: timeouts, retries, rate limit and credentials (default ``HttpPolicy()``).
        answer: which output holds the prediction, one of :data:`ANSWER_KINDS` (default
            "auto"; see :func:`parse_v2_response`).
        client: an ``httpx.Client`` to send through (default: a new one, closed by
            :meth:`close`).
        sleep, clock: how to wait and tell time (default ``time.sleep``, ``time.monotonic``).
        seed: seeds the backoff jitter (default 0).
        input_name: the model's image input (default "images"; Triton models often say
            "INPUT__0", MLServer "input-0").
        wire: the tensor's encoding, output name and request size (default
            :class:`WireFormat`: raw uint8 NCHW, as ``ownmark serve`` takes). Its
            ``input_name`` and ``answer`` give way to the arguments above when those are
            not their defaults.

    Each :meth:`query` sends one infer request per ``wire.max_batch`` images (default: one
    per query), each with a fresh ``id``.
    """

    protocol = "v2"

    def __init__(
        self,
        url: str,
        model: str | None = None,
        *,
        policy: HttpPolicy = _DEFAULT_POLICY,
        answer: str = "auto",
        client: httpx.Client | None = None,
        sleep: Sleep = time.sleep,
        clock: Clock = time.monotonic,
        seed: int = 0,
        input_name: str = "images",
        wire: WireFormat | None = None,
    ) -> None:
        _check_url(url, "suspect URL")
        if answer not in ANSWER_KINDS:
            raise ConfigError(
                f"unknown answer kind {answer!r}; choose one of {', '.join(ANSWER_KINDS)}"
            )
        if model is not None and (not isinstance(model, str) or not model.strip()):
            raise ConfigError(f"model name must be a non-empty string, got {model!r}")
        if not isinstance(input_name, str) or not input_name:
            raise ConfigError(f"input_name must be a non-empty string, got {input_name!r}")
        wire = _check_wire(wire)
        if wire.labels is not None:
            raise ConfigError(
                "--labels applies to the torchserve, template and python protocols; a v2 "
                "model answers class indices"
            )
        wire = replace(
            wire,
            input_name=input_name if input_name != "images" else wire.input_name,
            answer=answer if answer != "auto" else wire.answer,
        )
        base, name, version = _model_from_url(url, model, _MODEL_PATH, "/v2/models/NAME")
        super().__init__(policy, client, sleep, clock, seed, wire.encoding)
        self._wire = wire
        self._model = name
        self._base = base
        self._model_url = f"{self._base}/v2/models/{quote(name, safe='')}"
        if version is not None:
            self._model_url += f"/versions/{quote(version, safe='')}"
        self._infer_url = f"{self._model_url}/infer"
        self._metadata: dict[str, Any] | None = None

    @property
    def address(self) -> str:
        """The infer URL."""
        return self._infer_url

    @property
    def model(self) -> str:
        return self._model

    @property
    def wire(self) -> WireFormat:
        return self._wire

    def options(self) -> dict[str, Any]:
        return {
            "model": self._model,
            "input_name": self._wire.input_name,
            "output_name": self._wire.output_name,
            "answer": self._wire.answer,
            "max_batch": self._wire.max_batch,
            "encoding": self._wire.encoding.to_dict(),
        }

    def metadata(self) -> dict[str, Any]:
        """The model's metadata (``GET .../v2/models/NAME``), fetched once.

        Raises:
            QueryError: the request failed or the answer is not a JSON object.
        """
        if self._metadata is None:
            payload = self._transport.request("GET", self._model_url)
            if not isinstance(payload, dict):
                raise QueryError(f"the model metadata at {self._model_url} is not a JSON object")
            self._metadata = payload
        return self._metadata

    def check_input(self, image_shape: tuple[int, int, int]) -> None:
        """Check that the model takes images of ``image_shape`` (C, H, W) as encoded.

        The model's metadata must declare the input (name, datatype, shape, where -1 matches
        any size and a leading batch size is skipped). Metadata that lists no inputs
        (MLServer's default) is accepted when the shape is stated (``--input-shape``).

        Raises:
            QueryError: the metadata cannot be fetched or has no input shape.
            ConfigError: the model declares another input name, datatype or shape, or lists
                no inputs and no shape was stated.
        """
        encoding = self._wire.encoding
        wanted = encoding.image_shape(image_shape)
        inputs = self.metadata().get("inputs")
        if not isinstance(inputs, list) or not inputs:
            if encoding.shape is not None:
                return  # the owner stated the shape; the metadata has nothing to add
            raise ConfigError(
                f"the model metadata at {self._model_url} lists no inputs; state the input "
                f"shape, e.g. --input-shape {','.join(map(str, wanted))}"
            )
        named = [
            i for i in inputs if isinstance(i, dict) and i.get("name") == self._wire.input_name
        ]
        if not named:
            found = ", ".join(repr(i.get("name")) for i in inputs if isinstance(i, dict))
            raise ConfigError(
                f"the model at {self._model_url} has no input named {self._wire.input_name!r} "
                f"(inputs: {_one_line(found)}); pass --input-name NAME"
            )
        declared = named[0].get("shape")
        datatype = named[0].get("datatype")
        if isinstance(datatype, str) and datatype.upper() != encoding.datatype:
            hint = f"--input-datatype {datatype.upper()}"
            if datatype.upper() in ("FP32", "FP16") and encoding.scale == "none":
                hint += " (and --scale unit if it expects pixels in [0, 1])"
            raise ConfigError(
                f"the model at {self._model_url} takes {_one_line(datatype, 20)} input but "
                f"{encoding.datatype} is set; pass {hint}"
            )
        if not (
            isinstance(declared, list)
            and all(isinstance(d, int) and not isinstance(d, bool) for d in declared)
        ):
            raise QueryError(f"the model metadata at {self._model_url} has no input shape")
        sizes = declared[1:] if len(declared) == len(wanted) + 1 else declared
        if len(sizes) != len(wanted) or any(
            d not in (-1, s) for d, s in zip(sizes, wanted, strict=True)
        ):
            shown = "×".join(str(s) for s in wanted)
            raise ConfigError(
                f"the model at {self._model_url} takes images of shape {declared}, but these "
                f"images are sent as {shown}; use a key made for this model's input size, or "
                "--layout/--input-shape"
            )

    def check_input_shape(self, shape: tuple[int, int, int]) -> None:
        """Same as :meth:`check_input` (the name it had before)."""
        self.check_input(shape)

    def _answer(self, batch: npt.NDArray[np.uint8]) -> list[Answer]:
        spans = _chunks(int(batch.shape[0]), self._wire.max_batch)
        ids = [f"ownmark-{uuid.uuid4().hex}" for _ in spans]
        answers: list[Answer] = []
        for (start, stop), content, request_id in zip(
            spans, v2_bodies(batch, self._wire, ids), ids, strict=True
        ):
            self._record(content, request_id)
            payload = self._transport.request("POST", self._infer_url, content=content)
            answers += parse_v2_response(
                payload,
                stop - start,
                self._wire.answer,
                request_id=request_id,
                output_name=self._wire.output_name,
            )
        return answers
