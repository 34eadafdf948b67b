"""Tests for ownmark.models: registry, architectures, normalisation and model files."""

from __future__ import annotations

import json
import os
import re
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

import ownmark.models.io as model_io
from ownmark.errors import ConfigError, ModelFileError
from ownmark.models import (
    Classifier,
    ModelSpec,
    build_model,
    create_network,
    default_normalization,
    list_models,
    load_model,
    load_state_into,
    model_descriptions,
    read_model_metadata,
    save_model,
)
from ownmark.models.zhang import ZhangCNN

SHAPES = [(1, (28, 28)), (3, (32, 32))]


def _spec(
    arch: str, in_channels: int = 1, size: tuple[int, int] = (28, 28), classes: int = 10
) -> ModelSpec:
    return ModelSpec.with_defaults(arch, classes, in_channels, size)


def _small_model(seed: int = 0) -> Classifier:
    torch.manual_seed(seed)
    return build_model(_spec("zhang_mnist"))


# --- registry and architectures ------------------------------------------------------------


def test_builtin_models_registered_with_descriptions() -> None:
    names = list_models()
    assert {"zhang_mnist", "zhang_cifar10", "resnet18", "vgg16_bn"} <= set(names)
    assert names == sorted(names)
    descriptions = model_descriptions()
    assert all(descriptions[n] and "\n" not in descriptions[n] for n in names)


@pytest.mark.parametrize("arch", list_models())
@pytest.mark.parametrize(("channels", "size"), SHAPES)
def test_forward_shapes_finite_and_deterministic(
    arch: str, channels: int, size: tuple[int, int]
) -> None:
    torch.manual_seed(0)
    model = build_model(_spec(arch, channels, size, classes=7)).eval()
    x = torch.rand(2, channels, *size)
    with torch.no_grad():
        first = model(x)
        second = model(x)
    assert first.shape == (2, 7)
    assert torch.isfinite(first).all()
    assert torch.equal(first, second)


@pytest.mark.parametrize("arch", ["zhang_mnist", "zhang_cifar10", "resnet18"])
def test_init_is_deterministic_under_seed(arch: str) -> None:
    states = []
    for _ in range(2):
        torch.manual_seed(123)
        states.append(build_model(_spec(arch)).state_dict())
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    torch.manual_seed(124)
    other = build_model(_spec(arch)).state_dict()
    assert not all(torch.equal(states[0][k], other[k]) for k in other)


def _conv_params(c_in: int, c_out: int) -> int:
    return c_in * c_out * 3 * 3 + c_out


def _dense_params(n_in: int, n_out: int) -> int:
    return n_in * n_out + n_out


@pytest.mark.parametrize(
    ("arch", "in_channels", "size", "convs", "dense", "flat_side"),
    [
        ("zhang_mnist", 1, 28, (32, 32, 64, 64), (200, 200), 4),  # 28→26→24→12→10→8→4
        ("zhang_cifar10", 3, 32, (64, 64, 128, 128), (256, 256), 5),  # 32→30→28→14→12→10→5
    ],
)
def test_zhang_layers_match_table6(
    arch: str,
    in_channels: int,
    size: int,
    convs: tuple[int, int, int, int],
    dense: tuple[int, int],
    flat_side: int,
) -> None:
    net = create_network(arch, 10, in_channels, (size, size))
    assert isinstance(net, ZhangCNN)
    conv_layers = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in conv_layers] == list(convs)
    assert all(c.kernel_size == (3, 3) and c.padding == (0, 0) for c in conv_layers)
    pools = [m for m in net.modules() if isinstance(m, nn.MaxPool2d)]
    assert len(pools) == 2
    linears = [m for m in net.modules() if isinstance(m, nn.Linear)]
    flat = convs[3] * flat_side * flat_side
    assert [(m.in_features, m.out_features) for m in linears] == [
        (flat, dense[0]),
        (dense[0], dense[1]),
        (dense[1], 10),
    ]
    dropouts = [m for m in net.modules() if isinstance(m, nn.Dropout)]
    assert [d.p for d in dropouts] == [0.5]
    # Order of the dense part: Flatten, Dense, ReLU, Dropout, Dense, ReLU, Dense (logits).
    kinds = [type(m) for m in net.classifier]
    assert kinds == [nn.Flatten, nn.Linear, nn.ReLU, nn.Dropout, nn.Linear, nn.ReLU, nn.Linear]

    c1, c2, c3, c4 = convs
    expected = (
        _conv_params(in_channels, c1)
        + _conv_params(c1, c2)
        + _conv_params(c2, c3)
        + _conv_params(c3, c4)
        + _dense_params(flat, dense[0])
        + _dense_params(dense[0], dense[1])
        + _dense_params(dense[1], 10)
    )
    assert sum(p.numel() for p in net.parameters()) == expected


def test_zhang_param_counts_literal() -> None:
    mnist = create_network("zhang_mnist", 10, 1, (28, 28))
    cifar = create_network("zhang_cifar10", 10, 3, (32, 32))
    assert sum(p.numel() for p in mnist.parameters()) == (
        320 + 9248 + 18496 + 36928 + (1024 * 200 + 200) + (200 * 200 + 200) + (200 * 10 + 10)
    )
    assert sum(p.numel() for p in cifar.parameters()) == (
        1792 + 36928 + 73856 + 147584 + (3200 * 256 + 256) + (256 * 256 + 256) + (256 * 10 + 10)
    )


def test_zhang_rejects_too_small_input() -> None:
    with pytest.raises(ConfigError, match="too small"):
        create_network("zhang_mnist", 10, 1, (12, 12))


def test_unknown_model_lists_names() -> None:
    with pytest.raises(ConfigError) as info:
        create_network("resnet9000", 10, 3, (32, 32))
    message = str(info.value)
    assert all(name in message for name in list_models())
    assert "module:factory" in message


@pytest.mark.parametrize(
    ("classes", "channels", "size"), [(0, 1, (28, 28)), (10, 0, (28, 28)), (10, 1, (28, 0))]
)
def test_bad_dimensions_rejected(classes: int, channels: int, size: tuple[int, int]) -> None:
    with pytest.raises(ConfigError):
        create_network("zhang_mnist", classes, channels, size)


# --- normalisation -------------------------------------------------------------------------


def test_default_normalization() -> None:
    assert default_normalization(1) == ((0.1307,), (0.3081,))
    assert default_normalization(3) == ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))


def test_classifier_normalises_inputs() -> None:
    spec = ModelSpec("zhang_cifar10", 10, 3, (32, 32), (0.1, 0.2, 0.3), (0.5, 0.25, 2.0))
    torch.manual_seed(0)
    model = build_model(spec).eval()
    x = torch.rand(2, 3, 32, 32)
    mean = torch.tensor(spec.mean).view(1, 3, 1, 1)
    std = torch.tensor(spec.std).view(1, 3, 1, 1)
    manual = (x - mean) / std
    assert torch.allclose(model.normalize(x), manual)
    with torch.no_grad():
        assert torch.allclose(model(x), model.network(manual), atol=1e-6)


def test_classifier_rejects_wrong_channels() -> None:
    model = _small_model()
    with pytest.raises(ValueError, match="expected images"):
        model(torch.rand(2, 3, 28, 28))


def test_spec_validation() -> None:
    with pytest.raises(ConfigError, match="one per channel"):
        ModelSpec("zhang_mnist", 10, 3, (32, 32), (0.5,), (0.5,))
    with pytest.raises(ConfigError, match="> 0"):
        ModelSpec("zhang_mnist", 10, 1, (28, 28), (0.5,), (0.0,))
    spec = ModelSpec("zhang_mnist", 10, 1, [28, 28], [0.1], [0.3])  # type: ignore[arg-type]
    assert spec.input_size == (28, 28) and spec.mean == (0.1,)


# --- model files ---------------------------------------------------------------------------


def test_save_load_round_trip(tmp_path: Path) -> None:
    model = _small_model().eval()
    path = tmp_path / "model.safetensors"
    save_model(model, path, metadata={"test_accuracy": "0.99"})
    loaded = load_model(path)
    assert not loaded.training
    assert loaded.spec == model.spec
    original_state, loaded_state = model.state_dict(), loaded.state_dict()
    assert original_state.keys() == loaded_state.keys()
    assert all(torch.equal(original_state[k], loaded_state[k]) for k in original_state)
    x = torch.rand(2, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    meta = read_model_metadata(path)
    assert meta["format"] == "ownmark-model" and meta["format_version"] == "1"
    assert meta["arch"] == "zhang_mnist" and meta["num_classes"] == "10"
    assert meta["in_channels"] == "1" and json.loads(meta["input_size"]) == [28, 28]
    assert json.loads(meta["mean"]) == [0.1307] and json.loads(meta["std"]) == [0.3081]
    assert meta["test_accuracy"] == "0.99" and "ownmark_version" in meta
    assert [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]


def test_round_trip_with_batchnorm_buffers(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build_model(_spec("resnet18", 3, (32, 32)))
    with torch.no_grad():  # update running stats so buffers differ from their init
        model.train()(torch.rand(2, 3, 32, 32))
    model.eval()
    path = tmp_path / "r.safetensors"
    save_model(model, path)
    loaded = load_model(path)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))


def test_load_state_into(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    save_model(_small_model(seed=1), path)
    target = _small_model(seed=2)
    load_state_into(target, path)
    source = load_model(path)
    assert all(torch.equal(v, target.state_dict()[k]) for k, v in source.state_dict().items())
    torch.manual_seed(0)
    other = build_model(_spec("zhang_cifar10", 3, (32, 32)))
    with pytest.raises(ModelFileError, match="not zhang_cifar10"):
        load_state_into(other, path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ModelFileError, match=r"model file not found.*ownmark train"):
        load_model(tmp_path / "nope.safetensors")


def test_random_bytes_file(tmp_path: Path) -> None:
    path = tmp_path / "junk.safetensors"
    path.write_bytes(os.urandom(2048))
    with pytest.raises(ModelFileError) as info:
        load_model(path)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("keep", [0, 5, 0.5])
def test_truncated_file(tmp_path: Path, keep: float) -> None:
    path = tmp_path / "m.safetensors"
    save_model(_small_model(), path)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep) if isinstance(keep, float) else keep])
    with pytest.raises(ModelFileError) as info:
        load_model(path)
    assert "\n" not in str(info.value)


def test_non_ownmark_safetensors(tmp_path: Path) -> None:
    plain = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(3)}, str(plain))
    other = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(3)}, str(other), metadata={"format": "pt"})
    for path in (plain, other):
        with pytest.raises(ModelFileError, match="not an ownmark model"):
            load_model(path)


def test_state_dict_mismatch(tmp_path: Path) -> None:
    model = _small_model()
    meta = model_io.spec_to_metadata(ModelSpec("zhang_mnist", 5, 1, (28, 28), (0.1307,), (0.3081,)))
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    path = tmp_path / "bad.safetensors"
    save_file(state, str(path), metadata=meta)
    with pytest.raises(ModelFileError, match="do not match"):
        load_model(path)
    del state["network.classifier.6.bias"]
    meta = model_io.spec_to_metadata(model.spec)
    save_file(state, str(path), metadata=meta)
    with pytest.raises(ModelFileError, match=re.escape("missing: network.classifier.6.bias")):
        load_model(path)


def test_damaged_metadata(tmp_path: Path) -> None:
    model = _small_model()
    meta = {**model_io.spec_to_metadata(model.spec), "input_size": "[28"}
    path = tmp_path / "m.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path), metadata=meta)
    with pytest.raises(ModelFileError, match="invalid model metadata"):
        load_model(path)


def test_failed_save_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = _small_model()
    path = tmp_path / "m.safetensors"
    with pytest.raises(TypeError):
        save_model(model, path, metadata={"epochs": 50})  # type: ignore[dict-item]
    with pytest.raises(ValueError, match="reserved"):
        save_model(model, path, metadata={"arch": "x"})
    assert list(tmp_path.iterdir()) == []

    def failing_save(tensors: object, filename: str, metadata: object = None) -> None:
        Path(filename).write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr("safetensors.torch.save_file", failing_save)
    with pytest.raises(OSError, match="disk full"):
        save_model(model, path)
    assert list(tmp_path.iterdir()) == []


# --- user factories ------------------------------------------------------------------------

USER_MODULE = "ownmark_test_user_nets"


@pytest.fixture
def user_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    code = textwrap.dedent(
        """
        from torch import nn

        def tiny(num_classes, in_channels):
            return nn.Sequential(
                nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(in_channels, num_classes)
            )

        def sized(num_classes, in_channels, input_size):
            h, w = input_size
            return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * h * w, num_classes))

        def not_a_module(num_classes, in_channels):
            return 42
        """
    )
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / f"{USER_MODULE}.py").write_text(code)
    monkeypatch.syspath_prepend(str(tmp_path / "code"))
    yield USER_MODULE
    sys.modules.pop(USER_MODULE, None)


def test_user_factory_builds_and_runs(user_module: str) -> None:
    for factory in ("tiny", "sized"):
        torch.manual_seed(0)
        model = build_model(_spec(f"{user_module}:{factory}", 3, (8, 8), classes=4)).eval()
        assert model(torch.rand(2, 3, 8, 8)).shape == (2, 4)


def test_user_factory_errors(user_module: str) -> None:
    with pytest.raises(ConfigError, match=re.escape("torch.nn.Module")):
        create_network(f"{user_module}:not_a_module", 4, 3, (8, 8))
    with pytest.raises(ConfigError, match="no attribute"):
        create_network(f"{user_module}:missing", 4, 3, (8, 8))
    with pytest.raises(ConfigError) as info:
        create_network("no_such_package_xyz.nets:build", 4, 3, (8, 8))
    assert "cannot import" in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(ConfigError, match=re.escape("package.module:factory")):
        create_network("bad name:x y", 4, 3, (8, 8))


def test_custom_model_load_requires_allow_factory(user_module: str, tmp_path: Path) -> None:
    arch = f"{user_module}:tiny"
    torch.manual_seed(0)
    model = build_model(_spec(arch, 3, (8, 8), classes=4)).eval()
    path = tmp_path / "custom.safetensors"
    save_model(model, path)
    with pytest.raises(ModelFileError, match=re.escape(f"--allow-factory {arch}")):
        load_model(path)
    with pytest.raises(ModelFileError, match="--allow-factory"):
        load_model(path, allow_factory=f"{user_module}:sized")
    loaded = load_model(path, allow_factory=arch)
    x = torch.rand(2, 3, 8, 8)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
