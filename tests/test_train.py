"""The training loop: determinism, resume after interruption, key mixing, checkpoints."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
import torch

import ownmark.train as train_module
from ownmark.cli import main
from ownmark.data import DataSplits, stratified_subset
from ownmark.errors import ConfigError
from ownmark.models import load_model
from ownmark.schemes import create_scheme, scheme_for_key
from ownmark.train import Objective, TrainConfig, cross_entropy, fit, key_repeats
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


# ---------------------------------------------------------------------------------------------
# explicit resume, checkpoints inside an epoch, subsets, --device auto


class _Interrupt(Exception):
    """Stands for Ctrl+C in the middle of a step."""


def _interrupting(
    objective: Objective, after: int, error: type[BaseException] = _Interrupt
) -> Objective:
    """``objective``, but the call after ``after`` steps raises ``error`` (a mid-step stop)."""
    calls = 0

    def step(
        model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, is_key: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        nonlocal calls
        calls += 1
        if calls > after:
            raise error
        return objective(model, images, labels, is_key)

    return step


def test_resume_inside_an_epoch_equals_uninterrupted(tiny: DataSplits, tmp_path) -> None:  # type: ignore[no-untyped-def]
    # Augmentation and dropout both draw mid-epoch: their generators must be restored too.
    config = TrainConfig(epochs=3, batch_size=64, seed=4, key_ratio=0.1, augment=True)
    key = create_scheme("content", num_keys=10).generate(tiny, seed=0)
    steps = math.ceil((len(tiny.train) + key_repeats(len(tiny.train), 10, 0.1) * 10) / 64)
    assert steps == 6  # so the checkpoints below fall where the test says
    full = new_model("zhang_mnist", tiny, seed=1)
    full_result = fit(full, tiny.train, config, test=tiny.test, key=key, progress=False)

    checkpoint = tmp_path / "run.ckpt"
    interrupted = new_model("zhang_mnist", tiny, seed=1)
    objective = _interrupting(scheme_for_key(key).objective(key) or cross_entropy, after=steps + 3)
    with pytest.raises(_Interrupt):
        fit(
            interrupted,
            tiny.train,
            config,
            test=tiny.test,
            key=key,
            checkpoint=checkpoint,
            checkpoint_every=4,  # global steps 4 (epoch 1) and 8 = epoch 2, step 2
            progress=False,
            objective=objective,
        )
    state = torch.load(checkpoint, weights_only=True)
    assert (state["epoch"], state["inside"]["step"]) == (1, 2)

    lines: list[str] = []
    resumed = new_model("zhang_mnist", tiny, seed=99)  # different init: must be overwritten
    torch.manual_seed(12345)  # a different global RNG state: must be restored from the file
    result = fit(
        resumed,
        tiny.train,
        config,
        test=tiny.test,
        key=key,
        checkpoint=checkpoint,
        resume=True,
        checkpoint_every=4,
        progress=False,
        report=lines.append,
    )
    assert lines == [f"resuming from {checkpoint} at epoch 2/3, step 2/6"]
    full_w, resumed_w = _weights(full), _weights(resumed)
    assert full_w.keys() == resumed_w.keys()
    assert all(torch.equal(full_w[k], resumed_w[k]) for k in full_w)
    # Same losses and accuracies too: the epoch's running sums travel with the checkpoint.
    assert result.history == full_result.history


def test_existing_checkpoint_without_resume_is_refused_before_any_work(
    tiny: DataSplits,
    tmp_path,  # type: ignore[no-untyped-def]
) -> None:
    checkpoint = tmp_path / "run.ckpt"
    checkpoint.write_bytes(b"an earlier run")
    model = new_model("zhang_mnist", tiny, seed=1)
    before = _weights(model)
    with pytest.raises(ConfigError) as caught:
        fit(model, tiny.train, CONFIG, checkpoint=checkpoint, progress=False)
    message = str(caught.value)
    assert "\n" not in message and str(checkpoint) in message
    assert "--resume" in message and "delete it" in message and "--checkpoint" in message
    assert checkpoint.read_bytes() == b"an earlier run"
    assert all(torch.equal(before[k], v) for k, v in _weights(model).items())


def test_resume_without_checkpoint_is_refused(tiny: DataSplits, tmp_path) -> None:  # type: ignore[no-untyped-def]
    model = new_model("zhang_mnist", tiny, seed=1)
    with pytest.raises(ConfigError, match="does not exist; drop --resume"):
        fit(model, tiny.train, CONFIG, checkpoint=tmp_path / "no.ckpt", resume=True)
    with pytest.raises(ConfigError, match="--resume needs --checkpoint"):
        fit(model, tiny.train, CONFIG, resume=True)
    assert list(tmp_path.iterdir()) == []


def test_stratified_subset_keeps_class_shares(digits: DataSplits) -> None:
    train = digits.train
    subset = stratified_subset(train, 500, seed=0)
    assert len(subset) == 500
    assert torch.equal(subset.images, stratified_subset(train, 500, seed=0).images)
    full = torch.bincount(train.labels, minlength=10) * 500 / len(train)
    assert (torch.bincount(subset.labels, minlength=10) - full).abs().max() < 1
    assert not torch.equal(subset.labels, subset.labels.sort().values)  # shuffled, not by class
    with pytest.raises(ValueError):
        stratified_subset(train, len(train) + 1)


def test_device_auto_is_resolved_once() -> None:
    expected = "cuda" if torch.cuda.is_available() else None
    if expected is None:
        expected = "mps" if torch.backends.mps.is_available() else "cpu"
    assert TrainConfig(device="auto").device == expected
    assert TrainConfig().device == "cpu"  # the library's default is unchanged
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="not available on this machine"):
            TrainConfig(device="cuda")


def _train_argv(out: Path, *extra: str) -> list[str]:
    return [
        "-q",
        "train",
        "--model",
        "zhang_mnist",
        "--epochs",
        "2",
        "--train-subset",
        "300",
        "--test-subset",
        "100",
        "--out",
        str(out),
        *extra,
    ]


def test_cli_interrupt_then_resume_gives_the_uninterrupted_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert main(_train_argv(tmp_path / "full.safetensors")) == 0
    metrics = json.loads((tmp_path / "full.json").read_text())
    assert metrics["device"] == "cpu"  # --device auto, resolved (no GPU in the test runs)
    assert metrics["train_subset"] == {"size": 300, "of": 4000, "seed": 0, "stratified": True}
    assert metrics["test_subset"]["size"] == 100
    assert "on cpu" in capsys.readouterr().out

    checkpoint = tmp_path / "run.ckpt"
    out = tmp_path / "resumed.safetensors"
    argv = _train_argv(out, "--checkpoint", str(checkpoint), "--checkpoint-every", "2")

    def ctrl_c(*args: object) -> object:
        raise KeyboardInterrupt

    # 3 steps of 128 per epoch: steps 1-5 run, checkpoints after steps 2, 3 (epoch end) and 4
    # (epoch 2, step 1), and step 6 is "killed".
    monkeypatch.setattr(
        train_module, "cross_entropy", _interrupting(cross_entropy, 5, KeyboardInterrupt)
    )
    assert main(argv) == 130
    err = capsys.readouterr().err
    assert err == (
        f"ownmark: interrupted; {checkpoint} holds the last checkpoint: run the same command "
        "with --resume to continue\n"
    )
    monkeypatch.setattr(train_module, "cross_entropy", cross_entropy)

    # Without --resume: refused before any work, the checkpoint kept, nothing written.
    monkeypatch.setattr("ownmark.data.load_dataset", ctrl_c)  # loading data would be work
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("ownmark: error: checkpoint ") and err.count("\n") == 1
    assert "add --resume to continue it" in err and sorted(os.listdir(tmp_path)) == [
        "full.json",
        "full.safetensors",
        "run.ckpt",
    ]
    # --resume without a checkpoint: refused as well.
    assert main(_train_argv(out, "--checkpoint", str(tmp_path / "x.ckpt"), "--resume")) == 2
    assert "does not exist; drop --resume" in capsys.readouterr().err
    monkeypatch.undo()

    assert main([*argv, "--resume"]) == 0
    err = capsys.readouterr().err
    assert err == f"ownmark: resuming from {checkpoint} at epoch 2/2, step 1/3\n"
    assert not checkpoint.exists()  # a finished run removes it
    full_w = load_model(tmp_path / "full.safetensors").state_dict()
    resumed_w = load_model(out).state_dict()
    assert all(torch.equal(full_w[k], resumed_w[k]) for k in full_w)
