"""How the verifier talks to a remote suspect: wire protocols, retries, answer validation.

Three ways to reach a suspect, all implementing :class:`~ownmark.verify.suspects.Suspect`:

* :class:`V2Suspect`: the Open Inference Protocol (KServe v2), spoken by ``ownmark serve``,
  Triton, KServe and MLServer.
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
* :mod:`~ownmark.verify.remote.v2`, :mod:`~ownmark.verify.remote.template`,
  :mod:`~ownmark.verify.remote.python_adapter`: the three protocols.

This module holds the factory, :func:`open_suspect`. :mod:`ownmark.verify.remote`, where
all of this used to live, re-exports the same names.
"""

from __future__ import annotations

from typing import Final

from ownmark.errors import ConfigError
from ownmark.verify.remote.answers import Answer, normalize_answers
from ownmark.verify.remote.policy import _DEFAULT_POLICY, HttpPolicy
from ownmark.verify.remote.python_adapter import Adapter, CallableSuspect, load_adapter
from ownmark.verify.remote.template import ENCODINGS, TemplateSuspect
from ownmark.verify.remote.transport import QueryError
from ownmark.verify.remote.v2 import ANSWER_KINDS, V2Suspect, parse_v2_response
from ownmark.verify.suspects import Suspect

__all__ = [
    "ANSWER_KINDS",
    "ENCODINGS",
    "PROTOCOLS",
    "Adapter",
    "Answer",
    "CallableSuspect",
    "HttpPolicy",
    "QueryError",
    "TemplateSuspect",
    "V2Suspect",
    "load_adapter",
    "normalize_answers",
    "open_suspect",
    "parse_v2_response",
]

#: The protocols :func:`open_suspect` knows.
PROTOCOLS: Final = ("v2", "template", "python")


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
) -> Suspect:
    """Open a remote suspect by protocol, one of :data:`PROTOCOLS` (default "v2").

    * "v2": ``target`` is the URL (see :class:`V2Suspect`); ``model``, ``answer`` and
      ``input_name`` apply.
    * "template": ``target`` is the URL (may be "" when the template has one) and
      ``template`` the template file.
    * "python": ``target`` is the adapter spec (see :func:`load_adapter`).

    The caller closes the suspect (every one has ``.close()``).

    Raises:
        ConfigError: unknown protocol, or an option that does not apply to it.
    """
    if protocol not in PROTOCOLS:
        raise ConfigError(f"unknown protocol {protocol!r}; choose one of {', '.join(PROTOCOLS)}")
    if protocol != "v2":
        if model is not None:
            raise ConfigError(f"a model name applies only to the v2 protocol, not {protocol}")
        if answer != "auto":
            raise ConfigError(f"--answer applies only to the v2 protocol, not {protocol}")
    if protocol != "template" and template is not None:
        raise ConfigError(f"a template applies only to the template protocol, not {protocol}")
    if protocol == "v2":
        return V2Suspect(
            target, model, policy=policy, answer=answer, seed=seed, input_name=input_name
        )
    if protocol == "template":
        if template is None:
            raise ConfigError("the template protocol needs a template file (--template FILE)")
        return TemplateSuspect(template, url=target or None, policy=policy, seed=seed)
    return CallableSuspect(load_adapter(target), address=f"python:{target}")
