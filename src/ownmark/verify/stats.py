"""Exact binomial statistics for ownership decisions (no SciPy needed).

Under H0 ("the suspect is independent of the owner's model") each key query matches its key
label with probability at most ``p0``. Seeing ``k`` matches in ``n`` queries, the one-sided
p-value is the binomial upper tail ``P[X >= k]`` with ``X ~ Bin(n, p0)``: the chance that an
independent model matches at least that often.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum


def _log_binom_pmf(k: int, n: int, p: float) -> float:
    return (
        math.lgamma(n + 1)
        - math.lgamma(k + 1)
        - math.lgamma(n - k + 1)
        + k * math.log(p)
        + (n - k) * math.log1p(-p)
    )


def binomial_tail(k: int, n: int, p: float) -> float:
    """``P[X >= k]`` for ``X ~ Binomial(n, p)``, summed exactly in log space.

    Accurate to ~1e-12 relative error for n up to millions; tiny tails (1e-300) stay
    representable as long as they are above float underflow.
    """
    if k <= 0:
        return 1.0
    if k > n:
        return 0.0
    if p <= 0.0:
        return 0.0
    if p >= 1.0:
        return 1.0
    terms = [_log_binom_pmf(i, n, p) for i in range(k, n + 1)]
    top = max(terms)
    return min(1.0, math.exp(top) * math.fsum(math.exp(t - top) for t in terms))


def clopper_pearson_upper(k: int, n: int, confidence: float = 0.999) -> float:
    """Exact one-sided upper confidence bound for a binomial rate after ``k`` of ``n``.

    The smallest ``p`` with ``P[X <= k | n, p] <= 1 - confidence``, found by bisection on
    the monotone lower tail; used to turn a measured false-match rate into a bound p0.
    """
    if not 0 <= k <= n or n <= 0:
        raise ValueError(f"need 0 <= k <= n and n > 0, got k={k}, n={n}")
    if k == n:
        return 1.0
    target = 1.0 - confidence
    lo, hi = k / n, 1.0
    for _ in range(200):
        mid = (lo + hi) / 2
        # P[X <= k] = 1 - P[X >= k+1]
        if 1.0 - binomial_tail(k + 1, n, mid) > target:
            lo = mid
        else:
            hi = mid
    return hi


def min_matches_for(n: int, p0: float, alpha: float) -> int | None:
    """Smallest k with ``binomial_tail(k, n, p0) <= alpha``; None if n queries cannot reach it."""
    for k in range(n + 1):
        if binomial_tail(k, n, p0) <= alpha:
            return k
    return None


class Verdict(str, Enum):
    """The three outcomes of a verification."""

    OWNED = "owned"
    NOT_OWNED = "not owned"
    INCONCLUSIVE = "inconclusive"


@dataclass(frozen=True)
class BinomialTest:
    """One-sided exact binomial test of H0 "independent model" at level ``alpha``.

    Args:
        p0: upper bound on an independent model's per-query match rate.
        alpha: false-claim rate the owner accepts (default 1e-6).
        max_error_rate: fraction of failed queries (errors, malformed answers) above which
            the verdict is "inconclusive" instead of "not owned" (default 0: any error
            makes a non-owned outcome inconclusive). Errors never count as matches.
    """

    p0: float
    alpha: float = 1e-6
    max_error_rate: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 < self.p0 < 1.0:
            raise ValueError(f"p0 must lie strictly between 0 and 1, got {self.p0}")
        if not 0.0 < self.alpha < 1.0:
            raise ValueError(f"alpha must lie strictly between 0 and 1, got {self.alpha}")

    def p_value(self, matches: int, queries: int) -> float:
        return binomial_tail(matches, queries, self.p0)

    def decide(self, matches: int, queries: int, errors: int = 0) -> tuple[Verdict, float]:
        """Verdict and p-value for ``matches`` out of ``queries`` (errors included in queries).

        Failed queries count as non-matches, so they can only make "owned" harder to reach;
        but a "not owned" outcome reached with errors is reported as inconclusive, since the
        missing answers might have been matches.
        """
        p_value = self.p_value(matches, queries)
        if queries > 0 and p_value <= self.alpha:
            return Verdict.OWNED, p_value
        if queries == 0 or errors > self.max_error_rate * queries:
            return Verdict.INCONCLUSIVE, p_value
        return Verdict.NOT_OWNED, p_value
