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


def fisher_one_sided(hits_a: int, n_a: int, hits_b: int, n_b: int) -> float:
    """Fisher's exact one-sided p-value that group A's hit rate exceeds group B's.

    Conditional on the total hits, A's hits are hypergeometric under H0 (equal rates); the
    p-value is ``P[X >= hits_a]``. With an empty group there is no evidence (1.0).
    """
    if not (0 <= hits_a <= n_a and 0 <= hits_b <= n_b):
        raise ValueError(f"need 0 <= hits <= n, got {hits_a}/{n_a} and {hits_b}/{n_b}")
    if n_a == 0 or n_b == 0:
        return 1.0
    total, hits = n_a + n_b, hits_a + hits_b
    denominator = math.comb(total, n_a)
    numerator = sum(
        math.comb(hits, x) * math.comb(total - hits, n_a - x)
        for x in range(hits_a, min(hits, n_a) + 1)
    )
    # Exact integers: a Fraction-free ratio, precise for any size we meet.
    return min(1.0, numerator / denominator)


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
    """Exact one-sided binomial test of H0 "independent model", with optional early stopping.

    Under H0 each key query matches with probability at most ``p0``. After ``n`` key queries
    with ``k`` matches the p-value is ``P[Bin(n, p0) >= k]``.

    Stopping early peeks at the data, and every peek is another chance for an innocent model to
    look guilty. With ``sequential=True`` the verifier may look after every query, up to
    ``max_queries`` looks, and each look is tested at ``alpha / max_queries`` (Bonferroni
    alpha spending). The union bound then gives, whatever the stopping rule and batch sizes::

        P_H0[ claim "owned" at any look ] <= sum over looks of alpha / max_queries <= alpha

    (and any true match rate p < p0 only lowers each term). With ``sequential=False`` there is
    one look, after all ``max_queries`` queries, at level ``alpha``.

    Stopping for futility (even matching every remaining query could not reach the level) and
    stopping on errors never claim ownership, so they cannot raise the false-claim rate.

    Args:
        p0: upper bound on an independent model's per-query match rate.
        alpha: false-claim rate the owner accepts (default 1e-6).
        max_queries: the key-query budget, which is also the most looks (default 100).
        sequential: look after every query (default) or only once at the end.
    """

    p0: float
    alpha: float = 1e-6
    max_queries: int = 100
    sequential: bool = True

    def __post_init__(self) -> None:
        if not 0.0 < self.p0 < 1.0:
            raise ValueError(f"p0 must lie strictly between 0 and 1, got {self.p0}")
        if not 0.0 < self.alpha < 1.0:
            raise ValueError(f"alpha must lie strictly between 0 and 1, got {self.alpha}")
        if self.max_queries < 1:
            raise ValueError(f"max_queries must be at least 1, got {self.max_queries}")

    @property
    def looks(self) -> int:
        """Most looks the rule may take (the Bonferroni divisor)."""
        return self.max_queries if self.sequential else 1

    @property
    def level(self) -> float:
        """Significance level of each look: ``alpha / looks``."""
        return self.alpha / self.looks

    @property
    def method(self) -> str:
        if self.sequential:
            return (
                f"exact one-sided binomial tail, looked at after each query; each of up to "
                f"{self.looks} looks tested at alpha/{self.looks} (Bonferroni)"
            )
        return f"exact one-sided binomial tail, one look after {self.max_queries} queries"

    def p_value(self, matches: int, queries: int) -> float:
        """The exact binomial tail ``P[Bin(queries, p0) >= matches]`` (unadjusted)."""
        return binomial_tail(matches, queries, self.p0)

    def adjusted_p_value(self, matches: int, queries: int) -> float:
        """The p-value times the number of looks (capped at 1): "owned" iff it is <= alpha."""
        return min(1.0, self.looks * self.p_value(matches, queries))

    def reached(self, matches: int, queries: int) -> bool:
        """Whether ``matches`` out of ``queries`` claims ownership at this look.

        Without ``sequential`` the only look is after the whole budget.
        """
        if queries <= 0 or (not self.sequential and queries != self.max_queries):
            return False
        return self.p_value(matches, queries) <= self.level

    def queries_to_owned(self, matches: int, queries: int) -> int | None:
        """Fewest further queries that could reach "owned" if they all matched.

        None if not even the whole remaining budget could (the verification is futile). Since
        ``P[Bin(n+1, p) >= k+1] <= P[Bin(n, p) >= k]``, adding matched queries only lowers the
        p-value, so checking the remaining budget in order is enough.
        """
        remaining = self.max_queries - queries
        if not self.sequential:
            return remaining if self.reached(matches + remaining, self.max_queries) else None
        if remaining < 1 or not self.reached(matches + remaining, self.max_queries):
            return None
        # reached(matches + j, queries + j) is monotone in j: binary search for the first.
        lo, hi = 1, remaining
        while lo < hi:
            mid = (lo + hi) // 2
            if self.reached(matches + mid, queries + mid):
                hi = mid
            else:
                lo = mid + 1
        return lo

    def decide(
        self, matches: int, queries: int, errors: int = 0, *, dismissed: bool = False
    ) -> tuple[Verdict, float]:
        """Final verdict after the last look, and the exact (unadjusted) p-value.

        Failed queries are counted in ``queries`` as non-matches, so they can only make
        "owned" harder. If the verdict is not "owned" but would be with the failed queries and
        the unused budget all matching, the missing answers could have changed it: the result
        is "inconclusive". Otherwise it is "not owned". ``dismissed``: the verifier stopped
        because the answered misses alone (failed queries counted as matches) made a
        watermark implausible, so the failures could not have changed the outcome.
        """
        p_value = self.p_value(matches, queries)
        if self.reached(matches, queries):
            return Verdict.OWNED, p_value
        if queries == 0:
            return Verdict.INCONCLUSIVE, p_value
        if dismissed:
            return Verdict.NOT_OWNED, p_value
        best_case = self.queries_to_owned(matches + errors, queries)
        if errors > 0 and (best_case is not None or self.reached(matches + errors, queries)):
            return Verdict.INCONCLUSIVE, p_value
        return Verdict.NOT_OWNED, p_value


def false_claim_probability(test: BinomialTest, match_rate: float | None = None) -> float:
    """Exact chance that ``test`` ever claims "owned" when each query matches at ``match_rate``.

    Dynamic programming over (queries, matches) with a look after **every** query, the most
    looks the rule allows (looking less often can only claim less). With ``match_rate`` at or
    below ``test.p0`` (default: ``p0``) this is the false-claim rate, which the Bonferroni
    rule keeps at or under ``alpha``; with a higher rate it is the power.
    """
    p = test.p0 if match_rate is None else match_rate
    alive = [1.0]  # alive[m]: chance of m matches so far without having claimed
    claimed = 0.0
    looks = range(1, test.max_queries + 1) if test.sequential else [test.max_queries]
    last_look = 0
    for n in looks:
        for _ in range(n - last_look):
            nxt = [0.0] * (len(alive) + 1)
            for m, mass in enumerate(alive):
                nxt[m] += mass * (1 - p)
                nxt[m + 1] += mass * p
            alive = nxt
        last_look = n
        for m, mass in enumerate(alive):
            if mass and test.reached(m, n):
                claimed += mass
                alive[m] = 0.0
    return claimed
