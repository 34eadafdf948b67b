"""The statistical decision and the black-box verifier."""

from __future__ import annotations

from collections.abc import Sequence
from fractions import Fraction
from math import comb

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import beta, binom

from ownmark.data import DataSplits
from ownmark.errors import ConfigError
from ownmark.keys import KeySet
from ownmark.schemes import create_scheme
from ownmark.verify import (
    BinomialTest,
    Verdict,
    binomial_tail,
    clopper_pearson_upper,
    image_sha256,
    verify_ownership,
)
from ownmark.verify.stats import false_claim_probability, min_matches_for


@settings(max_examples=200, deadline=None)
@given(
    n=st.integers(1, 400),
    data=st.data(),
    p=st.floats(1e-4, 0.9999),
)
def test_binomial_tail_matches_exact_arithmetic(n: int, data: st.DataObject, p: float) -> None:
    # Exact rational reference: SciPy's binom.sf itself drifts (2.7e-8 relative at 1e-292).
    k = data.draw(st.integers(0, n))
    q = Fraction(p)
    expected = sum(comb(n, i) * q**i * (1 - q) ** (n - i) for i in range(k, n + 1))
    assert binomial_tail(k, n, p) == pytest.approx(float(expected), rel=1e-9, abs=1e-300)


@pytest.mark.parametrize(("k", "n", "p"), [(5, 10, 0.1), (17, 20, 0.1), (3, 1000, 0.001)])
def test_binomial_tail_matches_scipy_in_ordinary_ranges(k: int, n: int, p: float) -> None:
    assert binomial_tail(k, n, p) == pytest.approx(float(binom.sf(k - 1, n, p)), rel=1e-9)


def test_binomial_tail_edges() -> None:
    assert binomial_tail(0, 10, 0.3) == 1.0
    assert binomial_tail(11, 10, 0.3) == 0.0
    assert binomial_tail(100, 100, 0.5) == pytest.approx(0.5**100)


@pytest.mark.parametrize(("k", "n"), [(0, 50), (3, 100), (40, 40), (7, 1000)])
def test_clopper_pearson_matches_beta_quantile(k: int, n: int) -> None:
    expected = 1.0 if k == n else float(beta.ppf(0.999, k + 1, n - k))
    assert clopper_pearson_upper(k, n, 0.999) == pytest.approx(expected, rel=1e-6)


def test_min_matches() -> None:
    assert min_matches_for(100, 0.5, 1e-6) == 74
    assert binomial_tail(74, 100, 0.5) <= 1e-6 < binomial_tail(73, 100, 0.5)
    assert min_matches_for(5, 0.5, 1e-6) is None


def test_decision_rules() -> None:
    test = BinomialTest(p0=0.1, alpha=1e-6, max_queries=20, sequential=False)
    assert (test.looks, test.level) == (1, 1e-6)
    assert test.decide(20, 20)[0] is Verdict.OWNED
    assert test.decide(2, 20)[0] is Verdict.NOT_OWNED
    # Errors turn "not owned" into "inconclusive" only when they could have changed it ...
    assert test.decide(2, 20, errors=18)[0] is Verdict.INCONCLUSIVE
    assert test.decide(2, 20, errors=1)[0] is Verdict.NOT_OWNED
    # ... and never into "owned".
    assert test.decide(0, 20, errors=20)[0] is Verdict.INCONCLUSIVE
    assert test.decide(0, 0)[0] is Verdict.INCONCLUSIVE
    with pytest.raises(ValueError):
        BinomialTest(p0=0.0)
    with pytest.raises(ValueError):
        BinomialTest(p0=0.1, max_queries=0)


def test_sequential_rule_spends_alpha_over_every_look() -> None:
    test = BinomialTest(p0=0.5, alpha=1e-6, max_queries=40)
    assert test.looks == 40 and test.level == pytest.approx(1e-6 / 40)
    assert test.adjusted_p_value(26, 26) == pytest.approx(40 * 0.5**26)
    # 26 straight matches: 0.5**26 = 1.5e-8 <= 2.5e-8 < 0.5**25.
    assert test.queries_to_owned(0, 0) == 26
    assert test.reached(26, 26) and not test.reached(25, 25)
    # 14 queries left after 26 misses cannot make up for them: futile.
    assert test.queries_to_owned(0, 26) is None


@settings(max_examples=60, deadline=None)
@given(
    p0=st.floats(0.01, 0.6),
    budget=st.integers(1, 40),
    matches=st.integers(0, 40),
    queries=st.integers(0, 40),
    sequential=st.booleans(),
)
def test_queries_to_owned_is_the_fewest_that_could_reach(
    p0: float, budget: int, matches: int, queries: int, sequential: bool
) -> None:
    queries = min(queries, budget)
    matches = min(matches, queries)
    test = BinomialTest(p0=p0, alpha=1e-3, max_queries=budget, sequential=sequential)
    need = test.queries_to_owned(matches, queries)
    extra = range(1, budget - queries + 1) if sequential else [budget - queries]
    reachable = [j for j in extra if test.reached(matches + j, queries + j)]
    assert need == (min(reachable) if reachable else None)


@settings(max_examples=40, deadline=None)
@given(
    p0=st.floats(0.01, 0.7),
    alpha=st.sampled_from([1e-1, 1e-2, 1e-3, 1e-6]),
    budget=st.integers(1, 120),
    shrink=st.floats(0.0, 1.0),
)
def test_exact_false_claim_rate_stays_under_alpha(
    p0: float, alpha: float, budget: int, shrink: float
) -> None:
    """The whole point of the look rule: P_H0[ever claim] <= alpha, even at a look per query."""
    for sequential in (True, False):
        test = BinomialTest(p0=p0, alpha=alpha, max_queries=budget, sequential=sequential)
        assert false_claim_probability(test) <= alpha * (1 + 1e-9)
        # An independent model that matches less often than p0 is claimed even less.
        assert false_claim_probability(test, shrink * p0) <= alpha * (1 + 1e-9)


def test_false_claim_probability_against_simulation() -> None:
    """The dynamic programme agrees with brute-force simulation where the rate is countable."""
    test = BinomialTest(p0=0.3, alpha=0.05, max_queries=20)
    exact = false_claim_probability(test)
    generator = torch.Generator().manual_seed(0)
    draws = torch.rand((50_000, 20), generator=generator) < 0.3
    counts = draws.cumsum(dim=1)
    critical = torch.tensor([min_matches_for(n, 0.3, test.level) or n + 1 for n in range(1, 21)])
    claimed = (counts >= critical).any(dim=1).float().mean().item()
    assert exact <= 0.05
    assert claimed == pytest.approx(exact, abs=4 * (exact / 50_000) ** 0.5 + 1e-4)


class FixedAnswers:
    """A scripted suspect: the same answer for every image (for the verifier's bookkeeping)."""

    address = "scripted"

    def __init__(self, answer: object, fail: bool = False) -> None:
        self.answer = answer
        self.fail = fail
        self.seen = 0
        self.calls: list[int] = []

    def query(self, images: torch.Tensor) -> Sequence[object]:
        self.seen += len(images)
        self.calls.append(len(images))
        if self.fail:
            raise TimeoutError("suspect did not answer")
        return [self.answer] * len(images)


@pytest.fixture(scope="module")
def key(digits: DataSplits) -> KeySet:
    return create_scheme("noise", num_keys=40).generate(digits, seed=0)


def test_verifier_stops_as_soon_as_owned(key: KeySet) -> None:
    suspect = FixedAnswers(0)
    result = verify_ownership(key, suspect, seed=0)
    # p0 0.5 (uncalibrated), budget 40: 26 matches are the fewest that can claim ownership.
    assert (result.matches, result.queries, result.errors) == (26, 26, 0)
    assert result.verdict is Verdict.OWNED and result.stop_reason == "owned"
    assert result.p_value == pytest.approx(0.5**26)
    assert (
        result.adjusted_p_value == pytest.approx(40 * 0.5**26) and result.adjusted_p_value <= 1e-6
    )
    assert suspect.seen == 26 and len({r.index for r in result.records}) == 26
    for record in result.records:
        assert record.index is not None
        assert record.image_sha256 == image_sha256(key.images[record.index])


def test_verifier_fixed_mode_spends_the_budget(key: KeySet) -> None:
    result = verify_ownership(key, FixedAnswers(0), sequential=False, seed=0)
    assert (result.matches, result.queries) == (40, 40)
    assert result.p_value == pytest.approx(0.5**40) and result.verdict is Verdict.OWNED


def test_verifier_gives_up_when_owned_is_out_of_reach(key: KeySet) -> None:
    suspect = FixedAnswers(3)
    result = verify_ownership(key, suspect, seed=0)
    assert result.verdict is Verdict.NOT_OWNED and result.stop_reason == "futile"
    assert result.matches == 0 and result.queries == suspect.seen < len(key)


def test_verifier_never_owned_on_errors(key: KeySet) -> None:
    # p0 0.05: after 15 failures "owned" is still within reach, so only the error limit stops.
    failing = verify_ownership(key, FixedAnswers(0, fail=True), max_batch=5, p0=0.05, seed=0)
    assert failing.verdict is Verdict.INCONCLUSIVE and failing.stop_reason == "errors"
    # Planning counts failures as potential matches, so after 5 failures it asks one at a time.
    assert failing.matches == 0 and failing.errors == failing.queries == 11
    for bad in ["0", 10, -1, 0.5, None, True, float("nan"), [0]]:
        result = verify_ownership(key, FixedAnswers(bad), seed=0)
        assert result.verdict is Verdict.INCONCLUSIVE, bad
        assert result.matches == 0


def test_verifier_wrong_answer_count(key: KeySet) -> None:
    class Short(FixedAnswers):
        def query(self, images: torch.Tensor) -> Sequence[object]:
            return [0] * (len(images) - 1)

    result = verify_ownership(key, Short(0), seed=0)
    assert result.verdict is Verdict.INCONCLUSIVE and result.matches == 0
    assert all("expected" in (r.error or "") for r in result.records)


def test_verifier_budget_and_order(key: KeySet) -> None:
    suspect = FixedAnswers(0)
    with pytest.raises(ConfigError, match="can never reach alpha"):
        verify_ownership(key, suspect, max_queries=15, seed=1)
    result = verify_ownership(key, suspect, max_queries=15, p0=0.05, sequential=False, seed=1)
    assert suspect.seen == 15 == result.queries == result.budget
    other = verify_ownership(
        key, FixedAnswers(0), max_queries=15, p0=0.05, sequential=False, seed=2
    )
    assert [r.index for r in result.records] != [r.index for r in other.records]
    again = verify_ownership(
        key, FixedAnswers(0), max_queries=15, p0=0.05, sequential=False, seed=1
    )
    assert [r.index for r in result.records] == [r.index for r in again.records]


def test_verifier_mixes_decoys_without_counting_them(key: KeySet, digits: DataSplits) -> None:
    decoys = digits.test.images[:50]
    suspect = FixedAnswers(0)
    result = verify_ownership(key, suspect, decoys=decoys, decoy_ratio=1.0, seed=3)
    assert result.verdict is Verdict.OWNED and result.queries == 26
    assert result.decoys == 26 and suspect.seen == 52
    roles = [r.role for r in result.records]
    # Shuffled in, not appended: key and decoy images alternate somewhere in the request.
    assert roles != sorted(roles)
    decoy_hashes = {image_sha256(image) for image in decoys}
    assert all(r.image_sha256 in decoy_hashes for r in result.records if r.role == "decoy")
    with pytest.raises(ConfigError, match="decoy"):
        verify_ownership(key, suspect, decoy_ratio=1.0)


def test_verifier_requests_no_larger_than_needed(key: KeySet) -> None:
    """After a miss the next request carries only what could still reach "owned"."""

    class MissFirst(FixedAnswers):
        def query(self, images: torch.Tensor) -> Sequence[object]:
            super().query(images)
            return [5] + [0] * (len(images) - 1) if len(self.calls) == 1 else [0] * len(images)

    suspect = MissFirst(0)
    result = verify_ownership(key, suspect, seed=0)
    assert result.verdict is Verdict.OWNED
    assert suspect.calls[0] == 26 and sum(suspect.calls) == result.queries
    test = BinomialTest(p0=0.5, alpha=1e-6, max_queries=40)
    assert suspect.calls[1] == test.queries_to_owned(25, 26)


def test_verifier_dismisses_a_suspect_that_clearly_lacks_the_watermark(key: KeySet) -> None:
    quick = verify_ownership(
        key, FixedAnswers(3), p0=0.05, max_batch=1, min_watermark_rate=0.5, seed=0
    )
    # P[Bin(n, 0.5) <= 0] = 0.5**n < 1e-3 from n = 10 on.
    assert quick.verdict is Verdict.NOT_OWNED and quick.queries == 10
    assert quick.stop_reason == "dismissed"
    patient = verify_ownership(key, FixedAnswers(3), p0=0.05, max_batch=1, seed=0)
    assert patient.verdict is Verdict.NOT_OWNED and patient.queries > quick.queries
    assert patient.stop_reason == "futile"
