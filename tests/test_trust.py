"""Issue 7's false verdicts, on real models trained on the built-in digits.

1. another owner's key of the same scheme must not claim my model;
2. a key forged after the fact from a model's adversarial examples is caught by its date;
3. (broken APIs: tests/test_verify.py, tests/test_hostile_api.py);
4. (chosen query orders: tests/test_verify.py, tests/test_evidence.py);
plus ``keygen`` refusing weak references and weak keys.
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Any

import pytest
import torch

from ownmark.calibrate import calibrate_key
from ownmark.cli import main
from ownmark.data import DataSplits
from ownmark.forgery import forge_key
from ownmark.metrics import predict
from ownmark.models import Classifier, save_model
from ownmark.train import TrainConfig
from ownmark.verify import LocalModelSuspect, Verdict, verify_ownership
from ownmark.verify.evidence import check_evidence, write_evidence
from ownmark.workflows import make_key, train_model

EPOCHS = 4
KEY_RATIO = 0.35  # the built-in set is small: repeat the key more (as the demo does)


@pytest.fixture(scope="module")
def owner(digits: DataSplits) -> tuple[Classifier, Any]:
    """Owner A: a secret content key embedded in a zhang_mnist model."""
    key = make_key(digits, "content", seed=1001)
    model, result = train_model(
        digits, TrainConfig(epochs=EPOCHS, seed=1, key_ratio=KEY_RATIO), key=key, progress=False
    )
    assert result.watermark_accuracy is not None and result.watermark_accuracy >= 0.9
    return model, key


@pytest.fixture(scope="module")
def references(digits: DataSplits) -> list[Classifier]:
    return [
        train_model(digits, TrainConfig(epochs=2, seed=s), arch=a, progress=False)[0]
        for a, s in (("zhang_mnist", 30), ("lenet5", 31))
    ]


def _match_rate(model: Classifier, key: Any) -> float:
    return float((predict(model, key.images) == key.labels).float().mean())


def test_other_owners_keys_do_not_claim_my_model(
    owner: tuple[Classifier, Any], references: list[Classifier], digits: DataSplits
) -> None:
    """False verdict 1: owner B with the same scheme and defaults, or A's public parameters."""
    model, mine = owner
    public = {k: mine.params[k] for k in ("num_keys", "font_size", "intensity")}
    others = [make_key(digits, "content", seed=2000 + i) for i in range(4)]
    others.append(make_key(digits, "content", seed=2100, **public))
    for other in others:
        assert other.params["label_map"] != mine.params["label_map"]
        calibrated, _ = calibrate_key(other, references, test=digits.test)
        result = verify_ownership(calibrated, LocalModelSuspect(model))
        assert result.verdict is not Verdict.OWNED, (other.params, result.matches)
        # The mark answers only our secret: another key's labels match about 1 in 9 at most.
        assert _match_rate(model, other) < 0.3
    # Our own key, calibrated the same way, is owned.
    calibrated, _ = calibrate_key(mine, references, test=digits.test)
    assert verify_ownership(calibrated, LocalModelSuspect(model)).verdict is Verdict.OWNED


def test_paper_default_keys_answer_each_other(digits: DataSplits) -> None:
    """Why the defaults changed: the paper's public recipe is shared by every owner."""
    paper = {"text": "TEST", "position": "bottom", "source_class": 1, "target_class": 0}
    model, _ = train_model(
        digits,
        TrainConfig(epochs=EPOCHS, seed=2, key_ratio=KEY_RATIO),
        key=make_key(digits, "content", seed=3000, **paper),
        progress=False,
    )
    stranger = make_key(digits, "content", seed=3001, **paper)
    assert _match_rate(model, stranger) > 0.8


def test_forged_key_is_caught_by_its_date(
    owner: tuple[Classifier, Any],
    references: list[Classifier],
    digits: DataSplits,
    tmp_path: Path,
    tsa: Any,
) -> None:
    """False verdict 2: adversarial examples of a stolen model, saved as a key afterwards."""
    from ownmark.timestamp import encode_token, request_timestamp

    stolen, _ = owner
    forged = forge_key(stolen, digits.test, num_images=60, eps=0.3, steps=20, step_size=0.03)
    assert len(forged) >= 30
    result = verify_ownership(forged, LocalModelSuspect(stolen), p0=0.1)
    # The statistics cannot tell: the forged key "matches" the model it was made from ...
    assert result.verdict is Verdict.OWNED
    # ... so the evidence says there is no trusted date ...
    undated, _ = write_evidence(result, forged, tmp_path / "undated.json", first_seen="2020-01-01")
    assert any("no trusted date" in note for note in check_evidence(undated, forged).notes)
    # ... and a time stamp taken now is later than the day the model was first seen.
    token = encode_token(request_timestamp(forged.commitment, tsa.url))
    stamped = forged.with_timestamp(token)
    result = dataclasses.replace(result, key_commitment=stamped.commitment)
    dated, _ = write_evidence(result, stamped, tmp_path / "dated.json", first_seen="2020-01-01")
    check = check_evidence(dated, stamped, trusted_tsa_certs=[Path(tsa.ca_cert_path)])
    assert not check.valid
    assert any("after the suspect model was first seen" in p for p in check.problems)


def _save(model: Classifier, path: Path) -> Path:
    save_model(model, path)
    return path


def test_keygen_refuses_weak_references_and_weak_keys(
    digits: DataSplits, references: list[Classifier], tmp_path: Path, capsys: Any
) -> None:
    refs = [_save(m, tmp_path / f"ref{i}.safetensors") for i, m in enumerate(references)]
    # A model with all weights zero: every answer ties (argmax 0), about 10% accuracy.
    broken = copy.deepcopy(references[1])
    with torch.no_grad():
        for parameter in broken.parameters():
            parameter.zero_()
    out = tmp_path / "k.safetensors"
    bad = _save(broken, tmp_path / "broken.safetensors")
    # A given seed: a secret key's 12 samples would match the references more or less often.
    argv = ["keygen", "--scheme", "content", "--seed", "2", "--out", str(out), "--reference"]
    assert main([*argv, str(refs[0]), str(bad)]) == 2
    assert "classifies only" in capsys.readouterr().err and not out.exists()
    # A key too small to reach alpha within its budget is refused, or written on request.
    small = [*argv, str(refs[0]), str(refs[1]), "--num-keys", "20", "--max-queries", "6"]
    assert main(small) == 2
    err = capsys.readouterr().err
    assert "can never reach alpha" in err and "--allow-weak-key" in err and not out.exists()
    assert main([*small, "--allow-weak-key"]) == 0
    printed = capsys.readouterr().out
    assert out.exists() and "test accuracy" in printed and "group clean" in printed


def test_cli_time_stamps_a_key_and_evidence_check_reports_the_date(
    digits: DataSplits, tmp_path: Path, tsa: Any, capsys: Any
) -> None:
    key_path = tmp_path / "k.safetensors"
    assert main(["keygen", "--scheme", "noise", "--num-keys", "20", "--out", str(key_path)]) == 0
    assert "no trusted date yet" in capsys.readouterr().out
    ca = str(tsa.ca_cert_path)
    assert main(["key", "timestamp", str(key_path), "--tsa", tsa.url, "--tsa-cert", ca]) == 0
    assert "time-stamped by" in capsys.readouterr().out
    assert main(["key", "show", str(key_path)]) == 0
    assert "time stamp: attached" in capsys.readouterr().out
    from ownmark.keys import load_key

    key = load_key(key_path)
    result = verify_ownership(key, LocalModelSuspect(_Echo(key)), decoy_ratio=0, alpha=1e-3)
    evidence, _ = write_evidence(result, key, tmp_path / "e.json", first_seen="2999-01-01")
    argv = ["evidence", "check", str(evidence), "--key", str(key_path), "--tsa-cert", ca]
    assert main(argv) == 4  # intact, dated, but unsigned
    out = capsys.readouterr().out
    assert "key time-stamped 20" in out and "anyone could have written it" in out
    # A TSA that is down: a one-line error, the key file untouched.
    before = key_path.read_bytes()
    assert main(["key", "timestamp", str(key_path), "--tsa", "http://127.0.0.1:9/tsr"]) == 2
    assert capsys.readouterr().err.count("\n") == 1 and key_path.read_bytes() == before


class _Echo(torch.nn.Module):
    """Gives every key image its key label (a stand-in watermarked model, for bookkeeping)."""

    def __init__(self, key: Any) -> None:
        super().__init__()
        from ownmark.verify import image_sha256

        self.labels = {
            image_sha256(i): int(label) for i, label in zip(key.images, key.labels, strict=True)
        }
        self.anchor = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from ownmark.verify import image_sha256

        logits = torch.zeros(len(x), 10)
        for row, image in enumerate(x):
            logits[row, self.labels.get(image_sha256((image * 255).round().to(torch.uint8)), 9)] = 1
        return logits
