"""Universal deep hiding + metric learning (seed 004) and licensee tracing (issue 12)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from ownmark.calibrate import calibrate_key
from ownmark.cli import main
from ownmark.data import DataSplits
from ownmark.errors import ConfigError, KeyFileError
from ownmark.keys import KeySet, load_key, save_key
from ownmark.models import Classifier, save_model
from ownmark.schemes import create_scheme, scheme_for_key
from ownmark.schemes.udh import HIDE_PREFIX, PAYLOAD, REVEAL_PREFIX, ncc
from ownmark.trace import calibrate_licensees, holm, trace_licensees
from ownmark.train import TrainConfig
from ownmark.verify import LocalModelSuspect, VerifyConfig
from ownmark.verify.evidence import check_evidence, write_evidence
from ownmark.verify.verifier import verify_ownership
from ownmark.workflows import new_model, train_model

#: Test-size hiding: 300 steps (seconds on one core), a stronger residual bound (24 grey
#: levels) so that a copy learns it in a few fine-tuning epochs on the 4,000 digits.
QUICK = {"hide_steps": 300, "calibration_images": 100, "max_residual": 24.0}


@pytest.fixture(scope="module")
def key(digits: DataSplits) -> KeySet:
    return create_scheme("udh", num_keys=60, licensee=7, **QUICK).generate(digits, seed=0)


def test_hide_and_reveal_round_trip(key: KeySet, digits: DataSplits) -> None:
    scheme = scheme_for_key(key)
    # The residual is universal (one pattern for every cover) and within its bound.
    residual = key.images.int() - key.originals.int()
    assert int(residual.abs().max()) <= 24
    inside = (key.originals > 30) & (key.originals < 225)  # no clipping there
    pattern = residual[0][inside[0] & inside[1]]
    assert torch.equal(pattern, residual[1][inside[0] & inside[1]])
    # The payload names the licensee; the reveal network recovers it from the triggers and
    # not from clean images.
    payload = key.extra[PAYLOAD]
    other = create_scheme("udh", num_keys=10, **QUICK).payload(1, 28, 28)
    assert not torch.equal(payload, other)
    scores = ncc(scheme.reveal(key.images), payload.float() / 255.0)
    clean = ncc(scheme.reveal(digits.test.images[300:500]), payload.float() / 255.0)
    assert float(scores.min()) > float(clean.max())
    identity = scheme.identity(key)
    assert identity["passed"] and identity["share_above"] >= 0.9
    assert identity["mean"] > identity["threshold"] > float(clean.mean())


def test_key_file_keeps_the_networks_under_the_commitment(key: KeySet, tmp_path: Path) -> None:
    path = tmp_path / "k.safetensors"
    save_key(key, path)
    loaded = load_key(path)
    remade = scheme_for_key(loaded).make_triggers(loaded.originals, torch.Generator())
    assert torch.equal(remade, key.images)
    with open(path, "rb") as f:
        metadata = json.loads(f.read(int.from_bytes(f.read(8), "little")))["__metadata__"]
    tensors = load_file(path)
    for prefix in (HIDE_PREFIX, REVEAL_PREFIX):
        changed = dict(tensors)
        name = next(n for n in changed if n.startswith("extra." + prefix))
        changed[name] = changed[name] + 1e-3
        save_file(changed, path, metadata=metadata)
        with pytest.raises(KeyFileError, match="commitment"):
            load_key(path)
        missing = {n: t for n, t in tensors.items() if not n.startswith("extra." + prefix)}
        save_file(missing, path, metadata=metadata)
        with pytest.raises(KeyFileError, match="commitment"):
            load_key(path)
    # A scheme object without the weights says what is missing.
    scheme = scheme_for_key(key)
    scheme.secrets = {n: t for n, t in key.extra.items() if not n.startswith(REVEAL_PREFIX)}
    with pytest.raises(ConfigError, match="no reveal network"):
        scheme.reveal(key.images)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"max_residual": 0.5}, "max_residual"),
        ({"licensee": -1}, "licensee"),
        ({"text": "", "logo": ""}, "copyright text or a logo"),
        ({"margin": -1.0}, "margin"),
        ({"trigger_share": 0.0}, "trigger_share"),
        ({"calibration_images": 3}, "calibration_images"),
    ],
)
def test_bad_parameters_fail(params: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        create_scheme("udh", **params)


def test_a_residual_that_rounds_to_nothing_is_refused_at_keygen(digits: DataSplits) -> None:
    # At 2 grey levels and 20 steps the hiding network's residual stays far below half a
    # grey level: every trigger would equal its cover, a key no host can learn.
    scheme = create_scheme("udh", num_keys=20, max_residual=2, hide_steps=20, calibration_images=20)
    with pytest.raises(ConfigError, match="rounds to no change"):
        scheme.generate(digits, seed=0)


def test_holm_adjustment() -> None:
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5]) == [0.5]


class Copy(torch.nn.Module):
    """A licensee copy reduced to what tracing sees: it answers the key label on the trigger
    images of the licensees it learnt (exactly those images) and like ``base`` elsewhere."""

    def __init__(self, base: Classifier, learnt: list[KeySet]) -> None:
        super().__init__()
        self.base = base
        self.triggers = torch.cat([k.images for k in learnt]).flatten(1).float() / 255.0
        self.labels = torch.cat([k.labels for k in learnt])
        self.classes = base.spec.num_classes
        self.spec = base.spec  # what calibration reads of a reference's architecture

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        logits = self.base(images)
        same = (images.flatten(1).unsqueeze(1) - self.triggers.unsqueeze(0)).abs().amax(2) < 1e-6
        hit = same.any(1)
        if bool(hit.any()):
            wanted = self.labels[same[hit].float().argmax(1)]
            logits[hit] = torch.nn.functional.one_hot(wanted, self.classes).float() * 50.0
        return logits


@pytest.fixture(scope="module")
def references(digits: DataSplits) -> list[Classifier]:
    """Two clean models of two architectures; the first is the licensees' base model."""
    return [
        train_model(digits, TrainConfig(epochs=2, seed=seed), arch=arch, progress=False)[0]
        for seed, arch in ((1, "lenet5"), (2, "zhang_mnist"))
    ]


@pytest.fixture(scope="module")
def licensed(
    digits: DataSplits, references: list[Classifier]
) -> tuple[dict[str, KeySet], Classifier]:
    """Three licensees' keys (calibrated on two clean models) and a clean base model."""
    base, other = references
    keys = {}
    for i in range(3):
        raw = create_scheme("udh", num_keys=40, licensee=i, hide_steps=30, calibration_images=20)
        keys[f"licensee-{i}"] = calibrate_key(
            raw.generate(digits, seed=10 + i), [base, other], test=digits.test, allow_weak=True
        )[0]
    return keys, base


def test_tracing_names_the_right_licensee_and_no_innocent_one(
    licensed: tuple[dict[str, KeySet], Classifier],
) -> None:
    keys, base = licensed
    config = VerifyConfig(alpha=1e-3)
    for name, key in keys.items():
        result = trace_licensees(keys, LocalModelSuspect(Copy(base, [key])), config)
        assert result.attribution == "licensee" and result.licensees == [name]
        own = next(t for t in result.tests if t.licensee == name)
        assert own.holm_p_value <= 1e-3 and own.holm_p_value >= own.p_value
    assert trace_licensees(keys, LocalModelSuspect(base), config).attribution == "none"
    # A copy that answers two licensees' keys (collusion): both are named, as ambiguous,
    # and never the third, innocent licensee.
    both = Copy(base, [keys["licensee-0"], keys["licensee-1"]])
    mixed = trace_licensees(keys, LocalModelSuspect(both), config)
    assert mixed.attribution == "ambiguous"
    assert mixed.licensees == ["licensee-0", "licensee-1"]
    with pytest.raises(ConfigError, match="at least 2 licensees"):
        trace_licensees({"a": keys["licensee-0"]}, LocalModelSuspect(base))


def test_licensee_calibration_counts_other_copies_and_refuses_weak_references(
    licensed: tuple[dict[str, KeySet], Classifier],
    references: list[Classifier],
    digits: DataSplits,
) -> None:
    keys, base = licensed
    copies = {name: Copy(base, [key]) for name, key in keys.items()}
    calibrated, reports = calibrate_licensees(keys, copies, references, test=digits.test)
    for name, report in reports.items():
        # Each key: the two clean references and the two other licensees' copies, which
        # answer this key like clean models do (p0 stays small).
        assert len(report.references) == 4
        assert 0 < calibrated[name].p0 < 0.5
    weak = [new_model("lenet5", digits, seed=3), references[1]]  # the first near chance
    with pytest.raises(ConfigError, match="near chance"):
        calibrate_licensees(keys, copies, weak, test=digits.test)
    lowered, _ = calibrate_licensees(
        keys, copies, weak, test=digits.test, min_reference_accuracy=0.0
    )
    assert set(lowered) == set(keys)


def test_trace_command_and_evidence_with_both_legs(
    licensed: tuple[dict[str, KeySet], Classifier],
    key: KeySet,
    digits: DataSplits,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    keys, base = licensed
    folder = tmp_path / "keys"
    folder.mkdir()
    for name, licensee_key in keys.items():
        save_key(licensee_key, folder / f"{name}.safetensors")
    model = tmp_path / "base.safetensors"
    save_model(base, model)
    code = main(["trace", "--keys", str(folder), "--model", str(model), "--alpha", "1e-3"])
    out = capsys.readouterr().out
    assert code == 1 and "attribution: none" in out and out.count("not owned") == 3
    assert main(["trace", "--keys", str(tmp_path / "none"), "--model", str(model)]) != 0
    assert "is not a folder" in capsys.readouterr().err
    # Evidence of a verification records the identity leg; the check recomputes it, and a
    # different key's check fails.
    suspect = LocalModelSuspect(Copy(base, [key]))
    result = verify_ownership(key, suspect, alpha=1e-3)
    evidence, report = write_evidence(result, key, tmp_path / "e.json")
    doc = json.loads(evidence.read_text())
    assert doc["identity"]["passed"] is True and doc["identity"]["measure"] == "ncc"
    assert "identity (second leg): PASSED" in report.read_text()
    checked = check_evidence(evidence, key)
    assert checked.valid, checked.problems
    assert not check_evidence(evidence, keys["licensee-0"]).valid


def test_identity_leg_travels_on_the_result_and_survives_float_noise_in_the_check(
    licensed: tuple[dict[str, KeySet], Classifier],
    key: KeySet,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import hashlib

    from ownmark.verify.evidence import _canonical

    _, base = licensed
    result = verify_ownership(key, LocalModelSuspect(Copy(base, [key])), alpha=1e-3)
    assert result.identity is not None and result.identity["passed"] is True
    assert result.summary()["identity"] == result.identity
    evidence, _ = write_evidence(result, key, tmp_path / "e.json")

    def rewritten(mean_shift: float) -> Path:
        doc = json.loads(evidence.read_text())
        doc["identity"]["mean"] += mean_shift
        doc["digest"] = hashlib.sha256(_canonical(doc)).hexdigest()
        path = tmp_path / f"shift-{mean_shift}.json"
        path.write_text(json.dumps(doc))
        return path

    # Another machine's float rounding (a few 1e-6) is not a tampered record; 0.01 is.
    assert check_evidence(rewritten(3e-6), key).valid
    shifted = check_evidence(rewritten(0.01), key)
    assert not shifted.valid and any("identity leg" in p for p in shifted.problems)
    # The CLI prints the leg from the result (the base model is innocent: not owned, but the
    # key's own triggers still reveal its image).
    save_key(key, tmp_path / "k.safetensors")
    save_model(base, tmp_path / "base.safetensors")
    argv = ["verify", "--key", str(tmp_path / "k.safetensors")]
    argv += ["--model", str(tmp_path / "base.safetensors"), "--evidence", str(tmp_path / "v.json")]
    main(argv)
    assert "identity (second leg): NCC" in capsys.readouterr().out
