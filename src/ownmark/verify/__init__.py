"""Ownership verification: suspects (black boxes), the statistical decision, the verifier."""

from __future__ import annotations

from ownmark.verify.stats import BinomialTest, Verdict, binomial_tail, clopper_pearson_upper
from ownmark.verify.suspects import LocalModelSuspect, Suspect
from ownmark.verify.verifier import QueryRecord, VerificationResult, verify_ownership

__all__ = [
    "BinomialTest",
    "LocalModelSuspect",
    "QueryRecord",
    "Suspect",
    "Verdict",
    "VerificationResult",
    "binomial_tail",
    "clopper_pearson_upper",
    "verify_ownership",
]
