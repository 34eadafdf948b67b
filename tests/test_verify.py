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
from ownmark.keys import KeySet
from ownmark.schemes import create_scheme
from ownmark.verify import (
    BinomialTest,
    Verdict,
    binomial_tail,
    clopper_pearson_upper,
    verify_ownership,
)
from ownmark.verify.stats import min_matches_for


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
    test = BinomialTest(p0=0.1, alpha=1e-6)
    assert test.decide(20, 20)[0] is Verdict.OWNED
    assert test.decide(2, 20)[0] is Verdict.NOT_OWNED
    # Errors can turn "not owned" into "inconclusive", never into "owned".
    assert test.decide(2, 20, errors=5)[0] is Verdict.INCONCLUSIVE
    assert test.decide(0, 0)[0] is Verdict.INCONCLUSIVE
    with pytest.raises(ValueError):
        BinomialTest(p0=0.0)


class FixedAnswers:
    """A fake suspect returning scripted answers (for the verifier's bookkeeping only)."""

    address = "scripted"

    def __init__(self, answer: object, fail: bool = False) -> None:
        self.answer = answer
        self.fail = fail
        self.seen = 0

    def query(self, images: torch.Tensor) -> Sequence[object]:
        self.seen += len(images)
        if self.fail:
            raise TimeoutError("suspect did not answer")
        return [self.answer] * len(images)


@pytest.fixture(scope="module")
def key(digits: DataSplits) -> KeySet:
    return create_scheme("noise", num_keys=40).generate(digits, seed=0)


def test_verifier_all_matches_is_owned(key: KeySet) -> None:
    result = verify_ownership(key, FixedAnswers(0))
    assert (result.matches, result.queries, result.errors) == (40, 40, 0)
    assert result.verdict is Verdict.OWNED
    assert result.p_value == pytest.approx(0.5**40)
    assert len({r.index for r in result.records}) == 40


def test_verifier_never_owned_on_errors(key: KeySet) -> None:
    failing = verify_ownership(key, FixedAnswers(0, fail=True))
    assert failing.verdict is Verdict.INCONCLUSIVE
    assert failing.matches == 0 and failing.errors == 40
    for bad in ["0", 10, -1, 0.5, None, True, float("nan")]:
        result = verify_ownership(key, FixedAnswers(bad))
        assert result.verdict is Verdict.INCONCLUSIVE, bad
        assert result.matches == 0


def test_verifier_wrong_answer_count(key: KeySet) -> None:
    class Short(FixedAnswers):
        def query(self, images: torch.Tensor) -> Sequence[object]:
            return [0] * (len(images) - 1)

    result = verify_ownership(key, Short(0))
    assert result.verdict is Verdict.INCONCLUSIVE and result.matches == 0


def test_verifier_budget_and_order(key: KeySet) -> None:
    suspect = FixedAnswers(0)
    result = verify_ownership(key, suspect, max_queries=15, seed=1)
    assert suspect.seen == 15 == result.queries
    other = verify_ownership(key, FixedAnswers(0), max_queries=15, seed=2)
    assert [r.index for r in result.records] != [r.index for r in other.records]
