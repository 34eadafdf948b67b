"""Contract tests over every registry entry, plus a scheme and an attack from the tests only.

Like timm's tests over ``list_models()``: whatever is registered gets the same checks. The
test scheme and attack (``plugins.py``) are registered here, never under ``src/``, and run
through keygen, embed, verify, evidence check, attack and matrix.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from ownmark.attacks import ATTACKS, AttackData
from ownmark.cli import main
from ownmark.data import DATASET_REGISTRY, DataSplits
from ownmark.errors import ConfigError, OwnmarkError
from ownmark.keys import load_key, save_key
from ownmark.models import MODELS, ModelSpec, build_model, load_model
from ownmark.registry import Registry, dataclass_params
from ownmark.schemes import SCHEMES, scheme_for_key
from ownmark.serve import BACKEND_REGISTRY
from ownmark.verify.remote import PROTOCOLS, open_suspect
from ownmark.verify.suspects import LocalModelSuspect, Suspect
from plugins import OBJECTIVE_CALLS, BlurDefence, CornerScheme
from quick_schemes import quick

BUILT_IN_SCHEMES = SCHEMES.names()
BUILT_IN_ATTACKS = ATTACKS.names()
ALL_SCHEMES = [*BUILT_IN_SCHEMES, CornerScheme.name]
ALL_ATTACKS = [*BUILT_IN_ATTACKS, BlurDefence.name]
#: Parameters that keep an attack quick on the small test data (strings, as from the CLI).
QUICK: dict[str, dict[str, str]] = {
    "finetune": {"epochs": "1"},
    "weight-noise": {"epochs": "1"},
    "ftll": {"epochs": "1"},
    "ftal": {"epochs": "1"},
    "rtll": {"epochs": "1"},
    "rtal": {"epochs": "1"},
    "distill": {"epochs": "1", "queries": "64"},
    "fine-prune": {"epochs": "1"},
    "overwrite": {"epochs": "1", "num_keys": "10"},
    "neural-cleanse": {"steps": "5", "epochs": "1"},
    "strip": {"overlays": "4"},
    "magnet": {"epochs": "1"},
    "invert": {"steps": "5", "starts": "blank,noise"},
    "forge": {"epochs": "1", "steps": "5", "num_images": "20", "num_decoys": "20"},
}


@pytest.fixture(scope="module", autouse=True)
def plugins() -> Iterator[None]:
    """Register the test-only scheme and attack for this module, then remove them."""
    SCHEMES.register(CornerScheme)
    ATTACKS.register(BlurDefence)
    yield
    SCHEMES.remove(CornerScheme.name)
    ATTACKS.remove(BlurDefence.name)


def test_registries_share_one_shape() -> None:
    for registry in (SCHEMES, ATTACKS, MODELS, DATASET_REGISTRY, BACKEND_REGISTRY, PROTOCOLS):
        assert isinstance(registry, Registry)
        assert registry.names() == sorted(registry.names()) and registry.names()
        for entry in registry:
            assert entry.summary and "\n" not in entry.summary
        with pytest.raises(ConfigError, match=f"unknown {registry.kind} 'nope'; choose one of"):
            registry.entry("nope")


# --- schemes -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ALL_SCHEMES)
def test_scheme_contract(name: str, digits: DataSplits, tmp_path: Path) -> None:
    scheme = SCHEMES.create(name, num_keys="20", **quick(name))  # strings convert to types
    assert scheme.config.num_keys == 20
    assert SCHEMES.params(name).keys() == dataclass_params(type(scheme.config)).keys()
    key = scheme.generate(digits, seed=3)
    assert key.scheme == name and len(key) == 20
    assert key.model_classes == digits.num_classes + type(scheme).extra_classes
    assert int(key.labels.max()) < key.model_classes
    # The key file keeps the scheme's secrets under the commitment.
    save_key(key, tmp_path / "k.safetensors")
    loaded = load_key(tmp_path / "k.safetensors")
    assert loaded.commitment == key.commitment and loaded.extra.keys() == key.extra.keys()
    assert all(torch.equal(loaded.extra[n], key.extra[n]) for n in key.extra)
    # The loaded key alone remakes its triggers: every secret the images need is stored.
    rebuilt = scheme_for_key(loaded)
    remade = rebuilt.make_triggers(loaded.originals, torch.Generator().manual_seed(0))
    assert torch.equal(remade, loaded.images)
    # One definition of a match: the key's own labels match, a shifted label does not.
    assert bool(rebuilt.matches(loaded.labels, loaded.labels).all())
    shifted = (loaded.labels + 1) % loaded.model_classes
    assert not bool(rebuilt.matches(shifted, loaded.labels).any())


@pytest.mark.parametrize("name", ALL_SCHEMES)
def test_scheme_fresh_triggers(name: str, digits: DataSplits) -> None:
    key = SCHEMES.create(name, num_keys=20, **quick(name)).generate(digits, seed=4)
    scheme = scheme_for_key(key)
    try:
        images, labels = scheme.fresh_triggers(key, digits, 15, torch.Generator().manual_seed(1))
    except ConfigError as exc:
        assert "cannot make fresh triggers" in str(exc)  # a scheme may say it cannot
        return
    assert images.shape == (15, *key.image_shape) and images.dtype == torch.uint8
    assert set(labels.tolist()) <= set(key.labels.tolist())
    # Fresh: none of them is one of the key's own trigger images.
    own = {bytes(image.numpy().tobytes()) for image in key.images}
    assert not any(bytes(image.numpy().tobytes()) in own for image in images)


@pytest.mark.parametrize("name", ALL_SCHEMES)
def test_scheme_rejects_bad_parameters(name: str) -> None:
    with pytest.raises(ConfigError, match="num_keys"):
        SCHEMES.create(name, num_keys="0")
    with pytest.raises(ConfigError, match="has no parameter 'nope'"):
        SCHEMES.create(name, nope="1")


# --- attacks -------------------------------------------------------------------------------


def _tiny_model(classes: int = 10) -> nn.Module:
    torch.manual_seed(0)
    return build_model(ModelSpec.with_defaults("lenet5", classes, 1, (28, 28)))


@pytest.mark.parametrize("name", ALL_ATTACKS)
def test_attack_contract(name: str, small_digits: DataSplits) -> None:
    entry = ATTACKS.entry(name)
    attack = ATTACKS.create(name, **QUICK.get(name, {}))
    attack.progress = False
    assert set(attack.needs) <= {"train", "unlabelled", "test", "suspect"}
    assert entry.params.keys() == dataclass_params(type(attack.config_values)).keys()
    record = attack.config()
    assert record["attack"] == name
    assert record.keys() - {"attack"} <= entry.params.keys()
    json.dumps(record)  # result files take it as it is
    model = _tiny_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    first, second = small_digits.test.halves()
    data = AttackData(train=first, test=second, unlabelled=first, suspect=LocalModelSuspect(model))
    attacked = attack(model, data)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert isinstance(attacked, nn.Module | Suspect)
    if isinstance(attacked, nn.Module):
        assert not attacked.training
        answers = attacked(torch.rand(2, 1, 28, 28))
        assert answers.shape == (2, 10)
    else:
        assert len(attacked.query(second.images[:4])) == 4
    if attack.needs:
        with pytest.raises(ConfigError, match="needs the attacker's"):
            attack(model, AttackData())


@pytest.mark.parametrize("name", ALL_ATTACKS)
def test_attack_parameters_are_typed(name: str) -> None:
    params = ATTACKS.params(name)
    with pytest.raises(ConfigError, match="has no parameter 'nope'"):
        ATTACKS.create(name, nope="1")
    numeric = [p for p in params.values() if p.type in ("int", "float")]
    if numeric:
        with pytest.raises(ConfigError, match=f"parameter {numeric[0].name} expects"):
            ATTACKS.create(name, **{numeric[0].name: "many"})


# --- models, data sets, backends -----------------------------------------------------------


@pytest.mark.parametrize("name", MODELS.names())
def test_model_contract(name: str) -> None:
    shape = (1, 28, 28) if name in ("lenet5", "zhang_mnist") else (3, 32, 32)
    torch.manual_seed(0)
    model = build_model(ModelSpec.with_defaults(name, 11, shape[0], shape[1:]))
    model.eval()
    with torch.no_grad():
        out = model(torch.rand(2, *shape))
    assert out.shape == (2, 11) and bool(torch.isfinite(out).all())


@pytest.mark.parametrize("name", DATASET_REGISTRY.names())
def test_dataset_contract(name: str) -> None:
    params = DATASET_REGISTRY.params(name)
    if "path" not in params:
        data = DATASET_REGISTRY.create(name)
        assert data.num_classes >= 2 and len(data.train) and len(data.test)
        return
    with pytest.raises(ConfigError, match="needs a path"):
        DATASET_REGISTRY.create(name)


@pytest.mark.parametrize("name", BACKEND_REGISTRY.names())
def test_backend_contract(name: str, tmp_path: Path) -> None:
    from ownmark.models import save_model
    from ownmark.serve import export_onnx

    model = _tiny_model()
    save_model(model, tmp_path / "m.safetensors")
    export_onnx(model, tmp_path / "m.onnx")
    files = {"torch": tmp_path / "m.safetensors", "onnxruntime": tmp_path / "m.onnx"}
    backend = BACKEND_REGISTRY.create(name, path=files.get(name, tmp_path / "m.safetensors"))
    assert backend.num_classes == 10 and backend.input_shape == (1, 28, 28)
    proba = backend.predict_proba(torch.randint(0, 256, (3, 1, 28, 28), dtype=torch.uint8).numpy())
    assert proba.shape == (3, 10) and abs(float(proba.sum()) - 3.0) < 1e-4
    with pytest.raises(OwnmarkError):
        BACKEND_REGISTRY.create(name, path=tmp_path / "missing.bin")


#: What each protocol needs to open (besides a URL), and an option that belongs to another.
def _protocol_setup(name: str, tmp_path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    if name == "template":
        template = tmp_path / "t.json"
        template.write_text(json.dumps({"answers": "labels"}))
        return {"template": str(template)}, {"adapter": "x.py:f"}
    if name == "python":
        adapter = tmp_path / "adapter.py"
        adapter.write_text("def answer(images):\n    return [0] * len(images)\n")
        return {"adapter": f"{adapter}:answer"}, {"model": "m"}
    return {}, {"adapter": "x.py:f"}


@pytest.mark.parametrize("name", PROTOCOLS.names())
def test_protocol_contract(name: str, tmp_path: Path) -> None:
    needed, foreign = _protocol_setup(name, tmp_path)
    paths = {"v2": "/v2/models/m", "torchserve": "/predictions/m"}
    url = "http://127.0.0.1:9" + paths.get(name, "/predict")
    suspect = open_suspect(url, name, **needed)
    try:
        assert isinstance(suspect, Suspect)
        assert suspect.protocol == name and suspect.address.startswith(url)
        json.dumps(suspect.options())  # recorded in the evidence as it is
        assert suspect.counters.requests_sent == 0 and suspect.take_sent() == []
    finally:
        suspect.close()
    suspect.close()  # closing twice is harmless
    with pytest.raises(ConfigError, match="applies only to"):
        open_suspect(url, name, **needed, **foreign)


# --- the test scheme and attack through every command --------------------------------------


def _run(*argv: Any) -> int:
    return main(["-q", *map(str, argv)])


def test_plugin_scheme_and_attack_through_every_command(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key, model, evidence = tmp_path / "k.safetensors", tmp_path / "m.safetensors", tmp_path / "e"
    assert _run("keygen", "--scheme", CornerScheme.name, "--seed", "1", "--num-keys", "60",
                "-p", "size=6", "--out", key) == 0  # fmt: skip
    made = load_key(key)
    assert made.extra_classes == 1 and set(made.labels.tolist()) == {10}
    OBJECTIVE_CALLS["count"] = 0
    assert _run("embed", "--key", key, "--epochs", "3", "--key-ratio", "0.2", "--seed", "1",
                "--out", model) == 0  # fmt: skip
    assert OBJECTIVE_CALLS["count"] > 0  # the scheme's own loss trained it
    marked = load_model(model)
    assert marked.spec.num_classes == 11  # the key's extra class
    metrics = json.loads(model.with_suffix(".json").read_text())
    assert metrics["watermark_accuracy"] >= 0.9
    capsys.readouterr()

    assert _run("verify", "--key", key, "--model", model, "--evidence", evidence / "e.json") == 0
    assert "verdict: owned" in capsys.readouterr().out
    # Intact but unsigned (exit 4): the check re-scored every answer with the scheme's rule.
    assert _run("evidence", "check", evidence / "e.json", "--key", key) == 4
    assert "intact: verdict owned" in capsys.readouterr().out

    # The defence wraps the model: measured through its answers, no model file to write.
    assert _run("attack", BlurDefence.name, "--model", model, "--key", key,
                "-p", "radius=1", "--metrics", tmp_path / "blur.json") == 0  # fmt: skip
    blurred = json.loads((tmp_path / "blur.json").read_text())
    assert blurred["attack"] == {"attack": "test-blur", "seed": 0, "radius": 1}
    assert blurred["before"]["watermark_accuracy"] >= 0.9
    assert 0.0 <= blurred["watermark_accuracy"] <= 1.0
    refused = ("attack", BlurDefence.name, "--model", model, "--key", key, "--out", tmp_path / "x")
    assert _run(*refused) == 2
    assert "no model file to write" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()

    out = tmp_path / "matrix"
    argv = [
        "matrix",
        "--out",
        out,
        "--schemes",
        CornerScheme.name,
        "--attacks",
        "test-blur,prune:rate=0.3",
        "--epochs",
        "2",
        "--num-keys",
        "40",
        "--executor",
        "inline",
    ]  # fmt: skip  (plugins registered in this process only)
    assert _run(*argv) == 0
    table = (out / "matrix.md").read_text()
    assert "| test-corner |" in table and "test-blur" in table and "prune:rate=0.3" in table
    cells = json.loads((out / "matrix.json").read_text())["cells"]
    assert {c["attack"] for c in cells} == {"none", "test-blur", "prune:rate=0.3"}
    assert all(c["verdict"] in ("owned", "not owned", "inconclusive") for c in cells)
    none = next(c for c in cells if c["attack"] == "none")
    assert none["verdict"] == "owned"
    assert (out / "matrix.png").read_bytes().startswith(b"\x89PNG")
    # Resumable: a second run redoes nothing (no file is rewritten).
    stamps = {p: p.stat().st_mtime_ns for p in (out / "cells").iterdir()}
    stamps |= {p: p.stat().st_mtime_ns for p in (out / "models").iterdir()}
    assert _run(*argv) == 0
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items())


def test_matrix_config_refuses_unknown_names(tmp_path: Path) -> None:
    from ownmark.matrix import MatrixConfig

    with pytest.raises(ConfigError, match="unknown attack 'nope'"):
        MatrixConfig(attacks=("nope",))
    with pytest.raises(ConfigError, match="unknown scheme 'nope'"):
        MatrixConfig(schemes=("nope",))
    with pytest.raises(ConfigError, match="has no parameter 'speed'"):
        MatrixConfig(attacks=("prune:speed=2",))
    config = tmp_path / "m.json"
    config.write_text(json.dumps({"seeds": [0, 1], "colour": "red"}))
    with pytest.raises(ConfigError, match="unknown matrix settings"):
        MatrixConfig.from_file(config)
    config.write_text(json.dumps({"seeds": [0, 1], "attacks": ["prune:rate=0.2"]}))
    loaded = MatrixConfig.from_file(config)
    assert loaded.seeds == (0, 1) and dataclasses.replace(loaded, epochs=1).epochs == 1


# --- files written before the scheme contract ----------------------------------------------

DATA = Path(__file__).parent / "data"


def test_files_written_by_ownmark_0_1_still_load(digits: DataSplits) -> None:
    """A key and a model file that ownmark 0.1.0 wrote (before ``extra`` tensors existed)."""
    key = load_key(DATA / "noise-key-0.1.0.safetensors")
    assert key.commitment == "97df6bc525faf589cf48e11978b43694429af523ac56309249e54ff088c6ae10"
    assert key.extra == {} and key.extra_classes == 0 and key.p0 == 0.1
    model = load_model(DATA / "lenet5-0.1.0.safetensors")
    assert model.spec.arch == "lenet5" and model.spec.num_classes == 10
    from ownmark.verify import verify_ownership

    result = verify_ownership(key, LocalModelSuspect(model))
    assert result.verdict.value in ("not owned", "inconclusive")  # an untrained model
    # What needs the pattern the old key did not keep says so in one line.
    with pytest.raises(ConfigError, match=r"made by ownmark 0\.1"):
        scheme_for_key(key).fresh_triggers(key, digits, 3, torch.Generator())
