"""Pruning exactness and the fine-tuning attack's protocol."""

from __future__ import annotations

import pytest
import torch

from ownmark.attacks import AttackData, FineTuning, MagnitudePruning, list_attacks, prunable_weights
from ownmark.data import DataSplits
from ownmark.errors import ConfigError
from ownmark.models import Classifier
from ownmark.workflows import new_model


@pytest.fixture(scope="module")
def model(digits: DataSplits) -> Classifier:
    return new_model("zhang_mnist", digits, seed=0)


def _zeros(model: torch.nn.Module) -> tuple[int, int]:
    weights = [w for _, w in prunable_weights(model)]
    return sum(int((w == 0).sum()) for w in weights), sum(w.numel() for w in weights)


def test_registry() -> None:
    assert {"prune", "finetune"} <= set(list_attacks())


def test_zero_rate_changes_nothing(model: Classifier) -> None:
    pruned = MagnitudePruning(rate=0.0)(model)
    for (name, a), b in zip(model.state_dict().items(), pruned.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("rate", [0.1, 0.5, 0.9])
def test_global_rate_is_exact_and_smallest(model: Classifier, rate: float) -> None:
    before_zero, total = _zeros(model)
    assert before_zero == 0
    pruned = MagnitudePruning(rate=rate)(model)
    zero, _ = _zeros(pruned)
    assert zero == round(rate * total)
    # Every pruned weight was no larger in magnitude than every kept one.
    old = torch.cat([w.detach().abs().flatten() for _, w in prunable_weights(model)])
    new = torch.cat([w.detach().flatten() for _, w in prunable_weights(pruned)])
    assert float(old[new == 0].max()) <= float(old[new != 0].min())
    # Biases are not pruned; the original model is untouched.
    assert all(
        torch.equal(p, q)
        for (n, p), q in zip(model.named_parameters(), pruned.parameters(), strict=True)
        if n.endswith("bias")
    )
    assert _zeros(model)[0] == 0


def test_per_layer_rate(model: Classifier) -> None:
    pruned = MagnitudePruning(rate=0.5, scope="layer")(model)
    for _, weight in prunable_weights(pruned):
        assert int((weight == 0).sum()) == round(0.5 * weight.numel())


def test_ties_still_exact() -> None:
    layer = torch.nn.Linear(10, 10)
    with torch.no_grad():
        layer.weight.fill_(0.5)
    pruned = MagnitudePruning(rate=0.3)(layer)
    assert int((pruned.weight == 0).sum()) == 30


def test_bad_rates() -> None:
    for rate in (-0.1, 1.5):
        with pytest.raises(ConfigError):
            MagnitudePruning(rate=rate)
    with pytest.raises(ConfigError):
        MagnitudePruning(rate=0.5, scope="row")


def test_finetune_changes_weights_not_original(model: Classifier, small_digits: DataSplits) -> None:
    first, second = small_digits.test.halves()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    tuned = FineTuning(epochs=1, progress=False)(model, AttackData(train=first, test=second))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert any(not torch.equal(before[k], v) for k, v in tuned.state_dict().items())
    assert not tuned.training
    with pytest.raises(ConfigError, match="needs the attacker's train"):
        FineTuning(epochs=1)(model)


def test_halves_split_the_test_set_evenly(digits: DataSplits) -> None:
    first, second = digits.test.halves()
    assert len(first) == len(second) == 500
    # The built-in split is shuffled: both halves hold every class (not 0-4 vs 5-9).
    assert set(first.labels.tolist()) == set(second.labels.tolist()) == set(range(10))


def test_prune_sweep_measures_the_original_once(
    model: Classifier, small_digits: DataSplits
) -> None:
    from ownmark.schemes import create_scheme
    from ownmark.workflows import prune_sweep

    key = create_scheme("content", num_keys=10).generate(small_digits, seed=0)
    rows = prune_sweep(model, [0.0, 0.5, 0.9], test=small_digits.test, key=key)
    assert [row["attack"]["rate"] for row in rows] == [0.0, 0.5, 0.9]
    assert rows[0]["before"] is rows[1]["before"] is rows[2]["before"]
    # Pruning nothing leaves every number as it was.
    assert rows[0]["after"] == rows[0]["before"]
    assert all(row["attack"]["scope"] == "global" for row in rows)
