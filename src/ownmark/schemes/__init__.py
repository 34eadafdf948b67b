"""Watermark schemes, one file each, enumerated through a registry.

>>> from ownmark.schemes import list_schemes
>>> list_schemes()
['content', 'newlabel', 'noise', 'stego', 'udh', 'unrelated']
"""

from __future__ import annotations

from ownmark.schemes import (  # noqa: F401  (registration)
    content,
    newlabel,
    noise,
    stego,
    udh,
    unrelated,
)
from ownmark.schemes.base import (
    SCHEMES,
    SchemeConfig,
    WatermarkScheme,
    answer_matcher,
    create_scheme,
    get_scheme_class,
    key_identity,
    key_label_lookup,
    key_matches,
    list_schemes,
    register_scheme,
    scheme_for_key,
    scheme_parameters,
)

__all__ = [
    "SCHEMES",
    "SchemeConfig",
    "WatermarkScheme",
    "answer_matcher",
    "create_scheme",
    "get_scheme_class",
    "key_identity",
    "key_label_lookup",
    "key_matches",
    "list_schemes",
    "register_scheme",
    "scheme_for_key",
    "scheme_parameters",
]
