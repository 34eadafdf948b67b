"""The training loop: determinism, resume after interruption, key mixing, checkpoints."""

from __future__ import annotations

import pytest
import torch

from ownmark.data import DataSplits
from ownmark.errors import ConfigError
from ownmark.schemes import create_scheme
from ownmark.train import TrainConfig, fit, key_repeats
from ownmark.workflows import new_model

CONFIG = TrainConfig(epochs=3, batch_size=64, seed=4, key_ratio=0.1)


@pytest.fixture(scope="module")
def tiny(small_digits: DataSplits) -> DataSplits:
    return DataSplits(
        train=small_digits.train.subset(torch.arange(320)),
        test=small_digits.test.subset(torch.arange(100)),
    )


def _weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_same_seed_same_weights(tiny: DataSplits) -> None:
    runs = []
    for _ in range(2):
        model = new_model("zhang_mnist", tiny, seed=1)
        fit(model, tiny.train, CONFIG, progress=False)
        runs.append(_weights(model))
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])


def test_resume_equals_uninterrupted(tiny: DataSplits, tmp_path) -> None:  # type: ignore[no-untyped-def]
    key = create_scheme("content", num_keys=10).generate(tiny, seed=0)
    full = new_model("zhang_mnist", tiny, seed=1)
    fit(full, tiny.train, CONFIG, key=key, progress=False)

    checkpoint = tmp_path / "run.ckpt"
    interrupted = new_model("zhang_mnist", tiny, seed=1)
    # "Interrupt" after epoch 1: a run configured for 1 epoch leaves the same checkpoint
    # as a 3-epoch run killed after its first epoch, except for the epoch count in the config.
    partial = TrainConfig(**{**CONFIG.__dict__, "epochs": 1})
    fit(interrupted, tiny.train, partial, key=key, checkpoint=checkpoint, progress=False)
    state = torch.load(checkpoint, weights_only=True)
    assert state["epoch"] == 1
    state["config"]["epochs"] = CONFIG.epochs
    torch.save(state, checkpoint)

    resumed = new_model("zhang_mnist", tiny, seed=99)  # different init: must be overwritten
    result = fit(
        resumed, tiny.train, CONFIG, key=key, checkpoint=checkpoint, resume=True, progress=False
    )
    assert [h["epoch"] for h in result.history] == [1, 2, 3]
    full_w, resumed_w = _weights(full), _weights(resumed)
    assert all(torch.equal(full_w[k], resumed_w[k]) for k in full_w)


def test_resume_refuses_other_config(tiny: DataSplits, tmp_path) -> None:  # type: ignore[no-untyped-def]
    checkpoint = tmp_path / "run.ckpt"
    model = new_model("zhang_mnist", tiny, seed=1)
    fit(model, tiny.train, TrainConfig(epochs=1, seed=1), checkpoint=checkpoint, progress=False)
    with pytest.raises(ConfigError, match="different configuration"):
        fit(
            model,
            tiny.train,
            TrainConfig(epochs=2, seed=2),
            checkpoint=checkpoint,
            resume=True,
            progress=False,
        )
    assert [p.name for p in tmp_path.iterdir()] == ["run.ckpt"]  # atomic: no temp files


def test_key_repeats_reach_the_ratio() -> None:
    assert key_repeats(60000, 100, 0.05) == 32  # 3200 key samples, 5.06% of the epoch
    assert key_repeats(1000, 100, 0.0) == 0
    for n, k, ratio in [(60000, 100, 0.05), (4000, 100, 0.05), (320, 10, 0.1)]:
        r = key_repeats(n, k, ratio)
        assert r * k / (n + r * k) >= ratio
        assert (r - 1) * k / (n + (r - 1) * k) < ratio or r == 1


def test_embedding_learns_the_key(small_digits: DataSplits) -> None:
    key = create_scheme("content", num_keys=20, source_class=1, target_class=0).generate(
        small_digits, seed=0
    )
    model = new_model("zhang_mnist", small_digits, seed=0)
    result = fit(
        model,
        small_digits.train,
        TrainConfig(epochs=6, seed=0, key_ratio=0.1),
        test=small_digits.test,
        key=key,
        progress=False,
    )
    assert result.watermark_accuracy is not None and result.watermark_accuracy >= 0.9
    assert result.test_accuracy is not None and result.test_accuracy >= 0.6  # chance is 0.1
    assert len(result.history) == 6 and result.seconds > 0


def test_bad_config() -> None:
    with pytest.raises(ConfigError):
        TrainConfig(key_ratio=1.0)
    with pytest.raises(ConfigError):
        TrainConfig(lr=0)


def test_augment_is_a_shift_and_optional_flip_of_each_image() -> None:
    from ownmark.train import augment

    batch = torch.rand(16, 3, 32, 32)
    out = augment(batch, torch.Generator().manual_seed(0))
    # Reference: the same draws, applied one image at a time.
    rng = torch.Generator().manual_seed(0)
    dy, dx = torch.randint(0, 9, (16,), generator=rng), torch.randint(0, 9, (16,), generator=rng)
    flip = torch.rand(16, generator=rng) < 0.5
    padded = torch.nn.functional.pad(batch, (4, 4, 4, 4))
    for i in range(16):
        y, x = int(dy[i]), int(dx[i])
        expected = padded[i, :, y : y + 32, x : x + 32]
        assert torch.equal(out[i], expected.flip(-1) if flip[i] else expected)
    assert 0 < int(flip.sum()) < 16  # both branches exercised


def test_zero_epochs_still_reports_accuracies(tiny: DataSplits) -> None:
    key = create_scheme("noise", num_keys=10).generate(tiny, seed=0)
    model = new_model("zhang_mnist", tiny, seed=1)
    result = fit(model, tiny.train, TrainConfig(epochs=0), test=tiny.test, key=key, progress=False)
    assert result.history == []
    assert result.test_accuracy is not None and 0.0 <= result.test_accuracy <= 1.0
    assert result.watermark_accuracy is not None
