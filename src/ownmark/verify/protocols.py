"""Compatibility module: the remote-suspect code now lives in :mod:`ownmark.verify.remote`.

Everything that was public here is re-exported, so ``from ownmark.verify.protocols import
V2Suspect`` and the like keep working. New code should import from
:mod:`ownmark.verify.remote` (or its modules: ``policy``, ``transport``, ``deadline``,
``answers``, ``base``, ``encoding``, ``v2``, ``torchserve``, ``template``,
``python_adapter``).
"""

from __future__ import annotations

from ownmark.verify.remote import (
    ANSWER_KINDS,
    ENCODINGS,
    PROTOCOLS,
    Adapter,
    Answer,
    CallableSuspect,
    HttpPolicy,
    InputEncoding,
    QueryError,
    TemplateSuspect,
    TorchServeSuspect,
    V2Suspect,
    WireFormat,
    load_adapter,
    normalize_answers,
    open_suspect,
    parse_torchserve_answer,
    parse_v2_response,
    read_labels,
)

__all__ = [
    "ANSWER_KINDS",
    "ENCODINGS",
    "PROTOCOLS",
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
    "read_labels",
]
