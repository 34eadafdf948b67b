"""Ownership verification: suspects (black boxes), the statistical decision, the verifier,
remote protocols and evidence files."""

from __future__ import annotations

from ownmark.verify.stats import BinomialTest, Verdict, binomial_tail, clopper_pearson_upper
from ownmark.verify.suspects import LocalModelSuspect, Suspect, SuspectUnreachable
from ownmark.verify.verifier import (
    QueryRecord,
    VerificationResult,
    VerifyConfig,
    image_sha256,
    verify_ownership,
)

__all__ = [
    "BinomialTest",
    "LocalModelSuspect",
    "QueryRecord",
    "Suspect",
    "SuspectUnreachable",
    "Verdict",
    "VerificationResult",
    "VerifyConfig",
    "binomial_tail",
    "clopper_pearson_upper",
    "image_sha256",
    "verify_ownership",
]
