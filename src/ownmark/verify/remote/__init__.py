"""How the verifier talks to a remote suspect: wire protocols, retries, answer validation.

Four ways to reach a suspect, all implementing :class:`~ownmark.verify.suspects.Suspect`:

* :class:`V2Suspect`: the Open Inference Protocol (KServe v2), spoken by ``ownmark serve``,
  Triton, KServe and MLServer; the tensor's datatype, scaling, normalisation, layout and
  shape are options (:class:`WireFormat`, :class:`InputEncoding`), not code.
* :class:`TorchServeSuspect`: TorchServe's inference API (one PNG per request, answers as
  class names, indices or name -> probability maps, names mapped by ``--labels``).
* :class:`TemplateSuspect`: any other JSON API, described by a small template that says where
  the images go in the request and where the answers are in the response.
* :class:`CallableSuspect`: a Python function (see :func:`load_adapter`), for APIs that need
  custom code (signing, uploads, odd encodings).

The HTTP suspects share one transport that retries transient failures (connection errors,
timeouts, 429 and 5xx) with seeded, jittered exponential backoff, honours ``Retry-After`` and
spaces requests to a rate limit. The suspect's server is not trusted, so the transport also
bounds what it can cost (:class:`HttpPolicy`): a deadline per request however slowly the
answer trickles in, a time budget for the whole run, a cap on ``Retry-After``, a cap on the
bytes read from an answer, and no redirects.

Every answer is validated here: a suspect returns exactly one answer per image, an integer
label or an :class:`~ownmark.verify.suspects.InvalidAnswer` where the image's scores name no
class (tied for the top, NaN, infinite), or raises :class:`QueryError` with a one-line cause.
The verifier records both as failed queries and never counts them as matches, so garbage in
an answer can only make a verification inconclusive, never "owned".

Modules, one per responsibility:

* :mod:`~ownmark.verify.remote.policy`: :class:`HttpPolicy`, the limits and credentials.
* :mod:`~ownmark.verify.remote.transport`: the HTTP transport (retries, backoff,
  ``Retry-After``, rate limit, time budget, answer size, redirects) and :class:`QueryError`.
* :mod:`~ownmark.verify.remote.deadline`: the per-request deadline at the socket.
* :mod:`~ownmark.verify.remote.answers`: answers to labels or InvalidAnswer
  (:func:`normalize_answers`).
* :mod:`~ownmark.verify.remote.base`: what the HTTP suspects share.
* :mod:`~ownmark.verify.remote.encoding`: the wire options, label files, byte-exact PNGs.
* :mod:`~ownmark.verify.remote.v2`, :mod:`~ownmark.verify.remote.torchserve`,
  :mod:`~ownmark.verify.remote.template`, :mod:`~ownmark.verify.remote.python_adapter`: the
  four protocols.

Every suspect records the SHA-256 of each body it sends; :func:`request_bodies` rebuilds
those bytes from the key images and the recorded options, for ``evidence check``.

This module holds the factory, :func:`open_suspect`. :mod:`ownmark.verify.remote`, where
all of this used to live, re-exports the same names.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from ownmark.errors import ConfigError
from ownmark.registry import Registry
from ownmark.verify.remote.answers import Answer, normalize_answers
from ownmark.verify.remote.encoding import (
    DATATYPES,
    LAYOUTS,
    SCALES,
    InputEncoding,
    WireFormat,
    png_bytes,
    read_labels,
)
from ownmark.verify.remote.policy import _DEFAULT_POLICY, HttpPolicy
from ownmark.verify.remote.python_adapter import Adapter, CallableSuspect, load_adapter
from ownmark.verify.remote.template import (
    ENCODINGS,
    TemplateSuspect,
    _template_from_record,
    template_bodies,
)
from ownmark.verify.remote.torchserve import (
    TorchServeSuspect,
    parse_torchserve_answer,
    torchserve_bodies,
)
from ownmark.verify.remote.transport import QueryError
from ownmark.verify.remote.v2 import ANSWER_KINDS, V2Suspect, parse_v2_response, v2_bodies
from ownmark.verify.suspects import Suspect

__all__ = [
    "ANSWER_KINDS",
    "DATATYPES",
    "ENCODINGS",
    "LAYOUTS",
    "PROTOCOLS",
    "SCALES",
    "Adapter",
    "Answer",
    "CallableSuspect",
    "HttpPolicy",
    "InputEncoding",
    "QueryError",
    "TemplateSuspect",
    "TorchServeSuspect",
    "V2Suspect",
    "WireFormat",
    "load_adapter",
    "normalize_answers",
    "open_suspect",
    "parse_torchserve_answer",
    "parse_v2_response",
    "png_bytes",
    "read_labels",
    "request_bodies",
]


def _refuse(protocol: str, what: str, applies: str) -> ConfigError:
    plural = "protocols" if " and " in applies else "protocol"
    return ConfigError(f"{what} applies only to the {applies} {plural}, not {protocol}")


@dataclass(frozen=True)
class OpenRequest:
    """What :func:`open_suspect` was asked for, handed to the protocol's opener."""

    target: str
    model: str | None
    policy: HttpPolicy
    answer: str
    template: str | None
    seed: int
    input_name: str
    wire: WireFormat
    adapter: str | None


def _open_v2(r: OpenRequest) -> Suspect:
    return V2Suspect(
        r.target,
        r.model,
        policy=r.policy,
        answer=r.answer,
        seed=r.seed,
        input_name=r.input_name,
        wire=r.wire,
    )


def _open_torchserve(r: OpenRequest) -> Suspect:
    return TorchServeSuspect(r.target, r.model, policy=r.policy, seed=r.seed, wire=r.wire)


def _open_template(r: OpenRequest) -> Suspect:
    if r.template is None:
        raise ConfigError("the template protocol needs a template file (--template FILE)")
    return TemplateSuspect(
        r.template, url=r.target or None, policy=r.policy, seed=r.seed, wire=r.wire
    )


def _open_python(r: OpenRequest) -> Suspect:
    if r.adapter is None:
        spec, url = r.target, None
    else:
        spec, url = r.adapter, r.target or None
    fn = load_adapter(spec, url=url, options=r.wire)
    return CallableSuspect(fn, address=url or f"python:{spec}", adapter=spec, wire=r.wire)


#: The protocols :func:`open_suspect` knows (the shared registry shape; an entry's factory
#: takes an :class:`OpenRequest`).
PROTOCOLS: Registry[Suspect] = Registry("protocol")
PROTOCOLS.add("v2", "KServe / Open Inference Protocol v2 (ownmark serve, MLServer, Triton)",
              _open_v2, params={})  # fmt: skip
PROTOCOLS.add("torchserve", "TorchServe inference API: one image per POST /predictions/NAME",
              _open_torchserve, params={})  # fmt: skip
PROTOCOLS.add("template", "any JSON API, described by a request/answer template file",
              _open_template, params={})  # fmt: skip
PROTOCOLS.add("python", "your own Python adapter function (for APIs no template fits)",
              _open_python, params={})  # fmt: skip


def open_suspect(
    target: str,
    protocol: str = "v2",
    *,
    model: str | None = None,
    policy: HttpPolicy = _DEFAULT_POLICY,
    answer: str = "auto",
    template: str | None = None,
    seed: int = 0,
    input_name: str = "images",
    wire: WireFormat | None = None,
    adapter: str | None = None,
) -> Suspect:
    """Open a remote suspect by protocol, one of :data:`PROTOCOLS` (default "v2").

    * "v2": ``target`` is the URL (see :class:`V2Suspect`); ``model``, ``answer``,
      ``input_name`` and all of ``wire`` but ``labels`` apply.
    * "torchserve": ``target`` is the predictions URL (see :class:`TorchServeSuspect`);
      ``model`` and ``wire.labels`` apply.
    * "template": ``target`` is the URL (may be "" when the template has one) and
      ``template`` the template file; ``wire``'s encoding, ``max_batch`` and ``labels`` apply.
    * "python": ``adapter`` is the adapter spec (see :func:`load_adapter`) and ``target``
      the suspect's URL, given to the adapter and named as the suspect's address; without
      ``adapter``, ``target`` is the spec (the older form; the address is then "python:SPEC").

    ``wire`` defaults to :class:`WireFormat` (raw uint8 NCHW, no labels). The caller closes
    the suspect.

    Raises:
        ConfigError: unknown protocol, or an option that does not apply to it.
    """
    opener = PROTOCOLS.entry(protocol).factory
    wire = wire if wire is not None else WireFormat()
    if protocol not in ("v2", "torchserve") and model is not None:
        raise _refuse(protocol, "a model name", "v2 and torchserve")
    if protocol != "v2":
        if answer != "auto" or wire.answer != "auto":
            raise _refuse(protocol, "--answer", "v2")
        if input_name != "images" or wire.input_name != "images":
            raise _refuse(protocol, "--input-name", "v2")
        if wire.output_name is not None:
            raise _refuse(protocol, "--output-name", "v2")
    if protocol != "template" and template is not None:
        raise _refuse(protocol, "a template", "template")
    if protocol != "python" and adapter is not None:
        raise _refuse(protocol, "--adapter", "python")
    return opener(
        OpenRequest(target, model, policy, answer, template, seed, input_name, wire, adapter)
    )


def request_bodies(
    protocol: str,
    options: Mapping[str, Any],
    batch: npt.NDArray[np.uint8],
    request_ids: Sequence[str | None],
) -> list[bytes] | None:
    """The request bodies a suspect of ``protocol`` with recorded ``options`` sends for the
    uint8 images ``batch`` (one query), given the ids it recorded: what ``evidence check``
    compares with the digests the evidence holds. None for protocols whose bytes ownmark
    does not write (a local model, a Python adapter).

    Raises:
        ConfigError, KeyError, TypeError, ValueError: the options are not what such a
            suspect records.
    """
    if protocol == "v2":
        wire = WireFormat(
            encoding=InputEncoding.from_dict(options["encoding"]),
            input_name=str(options["input_name"]),
            max_batch=options["max_batch"],
        )
        return v2_bodies(batch, wire, [str(i) for i in request_ids])
    if protocol == "template":
        encoding = InputEncoding.from_dict(options["encoding"])
        return template_bodies(batch, _template_from_record(options["template"]), encoding)
    if protocol == "torchserve":
        return torchserve_bodies(batch)
    return None
