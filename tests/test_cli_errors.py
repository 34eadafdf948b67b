"""Bad input to the ``ownmark`` command line: exit code 2, one line on stderr, nothing written.

Every error case checks the same contract (see ``ownmark.cli``): exit code 2, an empty
stdout, exactly one stderr line starting with ``ownmark: error:`` that names the problem,
no traceback, and no output or temporary file left behind. Positive controls run the same
commands with good inputs, so a case cannot pass just because the command always fails.

The CLI is called in-process (``ownmark.cli.main``) for speed; two tests run the real
console script to check its exit code and stderr.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file

from cli_run import run_cli
from ownmark.cli import main, parse_sweep
from ownmark.data import load_dataset
from ownmark.errors import ConfigError
from ownmark.keys import load_key
from ownmark.models import ModelSpec, build_model, load_model, save_model
from ownmark.workflows import new_model

#: a user-code architecture name (module does not exist: nothing can be imported by accident)
FACTORY = "ownmark_no_such_module:factory"

# ---------------------------------------------------------------------------------------------
# helpers


def assert_one_line_error(rc: int, out: str, err: str, *fragments: str) -> None:
    """Exit code 2, nothing on stdout, one 'ownmark: error:' line naming every fragment."""
    assert "Traceback" not in err + out, err
    assert rc == 2, (rc, out, err)
    assert out == ""
    assert err.startswith("ownmark: error: "), err
    assert err.endswith("\n") and err.count("\n") == 1, err
    assert len(err.strip()) > len("ownmark: error:") + 10
    for fragment in fragments:
        assert fragment in err, f"{fragment!r} not in {err!r}"


def files_in(folder: Path) -> list[str]:
    """Every name in ``folder`` (hidden temp files included), sorted."""
    return sorted(p.name for p in folder.iterdir())


def edit_key_file(src: Path, dst: Path, what: str) -> None:
    """Copy a key file, changing one thing but keeping the stored metadata (and commitment)."""
    with safe_open(str(src), framework="pt") as handle:
        metadata = dict(handle.metadata())
        tensors = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118
    if what == "pixel":
        images = tensors["images"].clone()
        images[0, 0, 0, 0] = 255 - int(images[0, 0, 0, 0])
        tensors["images"] = images
    elif what == "label":
        labels = tensors["labels"].clone()
        labels[0] = (int(labels[0]) + 1) % 10
        tensors["labels"] = labels
    elif what == "p0":
        metadata["p0"] = "0.01"  # claim a stronger false-match bound than the key has
    else:
        raise AssertionError(what)
    save_file(tensors, str(dst), metadata=metadata)


# ---------------------------------------------------------------------------------------------
# fixtures (built once per module)


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Good, corrupt and mismatching input files; maps placeholder names to paths."""
    folder = tmp_path_factory.mktemp("assets")
    key = folder / "key.safetensors"
    assert main(["keygen", "--scheme", "content", "--out", str(key), "--num-keys", "10"]) == 0
    assert load_key(key).num_classes == 10

    model = folder / "model.safetensors"
    save_model(new_model("zhang_mnist", load_dataset("digits")), model)
    save_model(
        build_model(ModelSpec.with_defaults("zhang_mnist", num_classes=5)),
        folder / "model5.safetensors",
    )
    save_model(
        build_model(ModelSpec.with_defaults("zhang_cifar10", 10, 3, (32, 32))),
        folder / "cifar.safetensors",
    )

    rng = np.random.default_rng(0)
    (folder / "random.bin").write_bytes(rng.integers(0, 256, 4096, dtype=np.uint8).tobytes())
    (folder / "empty.bin").write_bytes(b"")
    key_bytes = key.read_bytes()
    (folder / "key_trunc.safetensors").write_bytes(key_bytes[: len(key_bytes) // 2])
    model_bytes = model.read_bytes()
    (folder / "model_trunc.safetensors").write_bytes(model_bytes[:-1000])
    for what in ("pixel", "label", "p0"):
        edit_key_file(key, folder / f"key_edited_{what}.safetensors", what)
    with safe_open(str(model), framework="pt") as handle:
        metadata = dict(handle.metadata())
        weights = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118
    metadata["arch"] = FACTORY
    save_file(weights, str(folder / "factory.safetensors"), metadata=metadata)

    Image.fromarray(np.full((64, 64), 255, np.uint8)).save(folder / "big.png")
    small = np.zeros((8, 8), np.uint8)
    small[2:6, 2:6] = 255
    Image.fromarray(small).save(folder / "small.png")
    (folder / "empty_dir").mkdir()

    names = {
        "K": key,
        "M": model,
        "M5": folder / "model5.safetensors",
        "MCIFAR": folder / "cifar.safetensors",
        "RANDOM": folder / "random.bin",
        "EMPTY": folder / "empty.bin",
        "KTRUNC": folder / "key_trunc.safetensors",
        "MTRUNC": folder / "model_trunc.safetensors",
        "MFACTORY": folder / "factory.safetensors",
        "BIG": folder / "big.png",
        "SMALL": folder / "small.png",
        "EMPTYDIR": folder / "empty_dir",
        "MISSING": folder / "missing.safetensors",
        "NODIR": folder / "no_such_dir",
        **{f"KEDIT_{w}": folder / f"key_edited_{w}.safetensors" for w in ("pixel", "label", "p0")},
    }
    assert not names["MISSING"].exists() and not names["NODIR"].exists()
    return {name: str(path) for name, path in names.items()}


@pytest.fixture
def out_dir(tmp_path: Path) -> Path:
    """An empty folder for the command's outputs; must still be empty after an error."""
    folder = tmp_path / "out"
    folder.mkdir()
    return folder


def fill(items: Sequence[str], assets: dict[str, str], out: Path) -> list[str]:
    return [item.format(OUT=out, **assets) for item in items]


# ---------------------------------------------------------------------------------------------
# error cases: (argv template, fragments the message must contain); {OUT} is the output folder

ERROR_CASES: dict[str, tuple[list[str], list[str]]] = {
    # --- missing files
    "verify-missing-key": (
        ["verify", "--key", "{MISSING}", "--model", "{M}", "--json", "{OUT}/r.json"],
        ["key file not found", "{MISSING}"],
    ),
    "verify-missing-model": (
        ["verify", "--key", "{K}", "--model", "{NODIR}/m.safetensors", "--json", "{OUT}/r.json"],
        ["model file not found", "{NODIR}/m.safetensors"],
    ),
    "keygen-licensee-without-udh": (
        ["keygen", "--scheme", "content", "--licensee", "3", "--out", "{OUT}/K"],
        ["no licensee payload", "--scheme udh"],
    ),
    "trace-missing-keys-folder": (
        ["trace", "--keys", "{NODIR}", "--model", "{M}"],
        ["is not a folder", "{NODIR}"],
    ),
    "trace-one-key": (
        ["trace", "--keys", "{OUT}", "--model", "{M}"],
        ["holds 0 key file(s)", "at least 2"],
    ),
    "embed-missing-key": (
        ["-q", "embed", "--key", "{MISSING}", "--epochs", "1", "--out", "{OUT}/E.safetensors"],
        ["key file not found", "{MISSING}", "ownmark keygen"],
    ),
    "embed-missing-init-model": (
        [
            "-q",
            "embed",
            "--key",
            "{K}",
            "--from",
            "{MISSING}",
            "--epochs",
            "1",
            "--out",
            "{OUT}/E.safetensors",
        ],
        ["model file not found", "{MISSING}"],
    ),
    "prune-missing-model": (
        ["attack", "prune", "--model", "{MISSING}", "-p", "rate=0.5", "--out", "{OUT}/O"],
        ["model file not found", "{MISSING}"],
    ),
    "preview-missing-key": (
        ["preview", "{MISSING}", "--out", "{OUT}/P.png"],
        ["key file not found", "{MISSING}"],
    ),
    "mnist-missing-folder": (
        [
            "keygen",
            "--data",
            "mnist",
            "--data-path",
            "{NODIR}",
            "--scheme",
            "content",
            "--out",
            "{OUT}/K2",
        ],
        ["{NODIR}", "ownmark data download mnist"],
    ),
    "mnist-missing-files": (
        [
            "keygen",
            "--data",
            "mnist",
            "--data-path",
            "{EMPTYDIR}",
            "--scheme",
            "content",
            "--out",
            "{OUT}/K2",
        ],
        ["MNIST file not found", "train-images-idx3-ubyte", "ownmark data download mnist"],
    ),
    "mnist-without-path": (
        ["keygen", "--data", "mnist", "--scheme", "content", "--out", "{OUT}/K2"],
        ["'mnist'", "--data-path", "ownmark data download mnist"],
    ),
    "digits-with-path": (
        [
            "keygen",
            "--data",
            "digits",
            "--data-path",
            "{EMPTYDIR}",
            "--scheme",
            "content",
            "--out",
            "{OUT}/K2",
        ],
        ["built in", "takes no path"],
    ),
    # --- corrupt or wrong files
    "key-random-bytes": (
        ["verify", "--key", "{RANDOM}", "--model", "{M}"],
        ["{RANDOM}", "corrupt"],
    ),
    "key-empty-file": (
        ["verify", "--key", "{EMPTY}", "--model", "{M}"],
        ["{EMPTY}", "corrupt"],
    ),
    "key-truncated": (
        ["verify", "--key", "{KTRUNC}", "--model", "{M}"],
        ["{KTRUNC}", "corrupt"],
    ),
    "key-is-a-model": (
        ["verify", "--key", "{M}", "--model", "{M}"],
        ["{M}", "not an ownmark key file"],
    ),
    "model-random-bytes": (
        ["verify", "--key", "{K}", "--model", "{RANDOM}"],
        ["{RANDOM}", "corrupt"],
    ),
    "model-empty-file": (
        ["verify", "--key", "{K}", "--model", "{EMPTY}"],
        ["{EMPTY}", "not a valid model file"],
    ),
    "model-truncated": (
        ["verify", "--key", "{K}", "--model", "{MTRUNC}"],
        ["{MTRUNC}"],
    ),
    "model-is-a-key": (
        ["verify", "--key", "{K}", "--model", "{K}"],
        ["{K}", "not an ownmark model"],
    ),
    "model-with-custom-code": (
        ["verify", "--key", "{K}", "--model", "{MFACTORY}"],
        ["{MFACTORY}", FACTORY, "refused"],
    ),
    "prune-random-model": (
        ["attack", "prune", "--model", "{RANDOM}", "-p", "rate=0.5", "--out", "{OUT}/O"],
        ["{RANDOM}", "corrupt"],
    ),
    "preview-random-key": (
        ["preview", "{RANDOM}", "--out", "{OUT}/P.png"],
        ["{RANDOM}", "corrupt"],
    ),
    # --- edited key files (commitment no longer matches)
    **{
        f"key-edited-{what}": (
            ["verify", "--key", f"{{KEDIT_{what}}}", "--model", "{M}", "--json", "{OUT}/r.json"],
            [f"{{KEDIT_{what}}}", "modified", "commitment"],
        )
        for what in ("pixel", "label", "p0")
    },
    "preview-edited-key": (
        ["preview", "{KEDIT_pixel}", "--out", "{OUT}/P.png"],
        ["modified", "commitment"],
    ),
    "embed-edited-key": (
        ["-q", "embed", "--key", "{KEDIT_label}", "--epochs", "1", "--out", "{OUT}/E"],
        ["modified", "commitment"],
    ),
    # --- logos
    "logo-too-big": (
        [
            "keygen",
            "--scheme",
            "content",
            "-p",
            "logo={BIG}",
            "--out",
            "{OUT}/K3",
            "--num-keys",
            "10",
            "--preview",
            "{OUT}/K3.png",
        ],
        ["{BIG}", "64x64", "28x28"],
    ),
    "logo-missing": (
        [
            "keygen",
            "--scheme",
            "content",
            "-p",
            "logo={MISSING}",
            "--out",
            "{OUT}/K3",
            "--num-keys",
            "10",
        ],
        ["logo", "not found", "{MISSING}"],
    ),
    "logo-not-an-image": (
        [
            "keygen",
            "--scheme",
            "content",
            "-p",
            "logo={RANDOM}",
            "--out",
            "{OUT}/K3",
            "--num-keys",
            "10",
        ],
        ["{RANDOM}", "not a readable image"],
    ),
    "text-too-big": (
        [
            "keygen",
            "--scheme",
            "content",
            "-p",
            "font_size=30",
            "-p",
            "text=TEST",
            "--out",
            "{OUT}/K3",
            "--num-keys",
            "10",
        ],
        ["'TEST'", "28x28", "font_size"],
    ),
    # --- key / model / data mismatches
    "verify-class-mismatch": (
        ["verify", "--key", "{K}", "--model", "{M5}", "--json", "{OUT}/r.json"],
        ["10 classes", "5"],
    ),
    "verify-image-shape-mismatch": (
        ["verify", "--key", "{K}", "--model", "{MCIFAR}"],
        ["(1, 28, 28)", "(3, 32, 32)"],
    ),
    "embed-class-mismatch": (
        ["-q", "embed", "--key", "{K}", "--from", "{M5}", "--epochs", "1", "--out", "{OUT}/E"],
        ["10 classes", "5"],
    ),
    "prune-class-mismatch": (
        [
            "attack",
            "prune",
            "--model",
            "{M5}",
            "--key",
            "{K}",
            "-p",
            "rate=0.5",
            "--out",
            "{OUT}/O",
        ],
        ["10 classes", "5"],
    ),
    "prune-data-mismatch": (
        ["attack", "prune", "--model", "{M5}", "-p", "rate=0.5", "--out", "{OUT}/O"],
        ["10 classes", "5"],
    ),
    # --- unknown names and bad values
    "unknown-scheme": (
        ["keygen", "--scheme", "nope", "--out", "{OUT}/K"],
        ["'nope'", "content"],
    ),
    "unknown-model-arch": (
        ["-q", "train", "--model", "nope", "--epochs", "1", "--out", "{OUT}/M2"],
        ["unknown model 'nope'", "zhang_mnist"],
    ),
    "unknown-dataset-train": (
        ["-q", "train", "--data", "nope", "--epochs", "1", "--out", "{OUT}/M2"],
        ["unknown data set 'nope'", "digits"],
    ),
    "unknown-dataset-keygen": (
        ["keygen", "--scheme", "content", "--data", "nope", "--out", "{OUT}/K"],
        ["unknown data set 'nope'"],
    ),
    "unknown-scheme-parameter": (
        ["keygen", "--scheme", "content", "-p", "nope=1", "--out", "{OUT}/K"],
        ["no parameter 'nope'", "font_size"],
    ),
    "parameter-without-value": (
        ["keygen", "--scheme", "content", "-p", "font_size", "--out", "{OUT}/K"],
        ["NAME=VALUE", "'font_size'"],
    ),
    "bad-parameter-type": (
        ["keygen", "--scheme", "content", "-p", "font_size=abc", "--out", "{OUT}/K"],
        ["font_size", "int", "'abc'"],
    ),
    "bad-position": (
        [
            "keygen",
            "--scheme",
            "content",
            "-p",
            "position=left",
            "--num-keys",
            "10",
            "--out",
            "{OUT}/K",
        ],
        ["position", "'left'"],
    ),
    "target-class-out-of-range": (
        ["keygen", "--scheme", "content", "--target-class", "12", "--out", "{OUT}/K"],
        ["target_class=12", "0..9"],
    ),
    "source-class-out-of-range": (
        ["keygen", "--scheme", "content", "--source-class", "-1", "--out", "{OUT}/K"],
        ["source_class=-1", "0..9"],
    ),
    "zero-keys": (
        ["keygen", "--scheme", "content", "--num-keys", "0", "--out", "{OUT}/K"],
        ["num_keys", "0"],
    ),
    "too-many-keys": (
        ["keygen", "--scheme", "content", "--num-keys", "100000", "--out", "{OUT}/K"],
        ["training images", "but the key needs", "lower num_keys"],
    ),
    "noise-std-out-of-range": (
        ["keygen", "--scheme", "noise", "-p", "std=2", "--num-keys", "10", "--out", "{OUT}/K"],
        ["std", "2"],
    ),
    "prune-rate-above-one": (
        ["attack", "prune", "--model", "{M}", "-p", "rate=1.5", "--out", "{OUT}/O"],
        ["0..1", "1.5"],
    ),
    "prune-rate-negative-in-list": (
        ["attack", "prune", "--model", "{M}", "--sweep", "rate=0.5,-0.1"],
        ["0..1", "-0.1"],
    ),
    "prune-rate-not-a-number": (
        ["attack", "prune", "--model", "{M}", "-p", "rate=half", "--out", "{OUT}/O"],
        ["rate", "'half'"],
    ),
    "prune-sweep-with-out": (
        ["attack", "prune", "--model", "{M}", "--sweep", "rate=0.1..0.9", "--out", "{OUT}/O"],
        ["--out", "drop --out to sweep"],
    ),
    "prune-list-with-out": (
        [
            "attack",
            "prune",
            "--model",
            "{M}",
            "--sweep",
            "rate=0.1,0.5",
            "--out",
            "{OUT}/O",
            "--metrics",
            "{OUT}/m.json",
        ],
        ["--out", "drop --out to sweep"],
    ),
    "verify-alpha-zero": (
        ["verify", "--key", "{K}", "--model", "{M}", "--alpha", "0", "--json", "{OUT}/r.json"],
        ["alpha"],
    ),
    "verify-p0-one": (
        ["verify", "--key", "{K}", "--model", "{M}", "--p0", "1", "--json", "{OUT}/r.json"],
        ["p0"],
    ),
    "train-negative-epochs": (
        ["-q", "train", "--epochs", "-1", "--out", "{OUT}/M2"],
        ["epochs"],
    ),
    "embed-key-ratio-one": (
        ["-q", "embed", "--key", "{K}", "--key-ratio", "1", "--epochs", "1", "--out", "{OUT}/E"],
        ["key_ratio", "1"],
    ),
    # --- remote verification, serving, evidence
    "verify-budget-cannot-reach-alpha": (
        ["verify", "--key", "{K}", "--model", "{M}", "--max-queries", "5", "--json", "{OUT}/r"],
        ["5 key queries can never reach alpha", "--max-queries"],
    ),
    "verify-unknown-protocol": (
        ["verify", "--key", "{K}", "--p0", "0.05", "--url", "http://x:9", "--protocol", "grpc"],
        ["grpc", "v2"],
    ),
    "verify-server-down": (
        [
            "verify",
            "--key",
            "{K}",
            "--p0",
            "0.05",
            "--url",
            "http://127.0.0.1:9/v2/models/m",
            "--retries",
            "0",
            "--evidence",
            "{OUT}/e.json",
        ],
        ["cannot connect", "127.0.0.1:9"],
    ),
    "verify-bad-adapter": (
        [
            "verify",
            "--key",
            "{K}",
            "--p0",
            "0.05",
            "--url",
            "no_such_mod:fn",
            "--protocol",
            "python",
        ],
        ["no_such_mod"],
    ),
    "serve-missing-model": (["serve", "{NODIR}/m.safetensors"], ["not found"]),
    "serve-unknown-backend": (["serve", "{M}", "--backend", "tf"], ["tf", "onnxruntime"]),
    "serve-unknown-answer": (["serve", "{M}", "--answer", "logits"], ["logits", "topk"]),
    "export-missing-model": (
        ["export", "{NODIR}/m.safetensors", "--onnx", "{OUT}/m.onnx"],
        ["not found"],
    ),
    "evidence-check-missing": (
        ["evidence", "check", "{NODIR}/e.json", "--key", "{K}"],
        ["evidence file not found"],
    ),
    "keygen-one-reference": (
        ["keygen", "--scheme", "content", "--reference", "{M}", "--out", "{OUT}/K"],
        ["at least 2 clean reference models"],
    ),
    "calibrate-one-architecture": (
        ["calibrate", "{K}", "--reference", "{M}", "{M}", "--out", "{OUT}/K"],
        ["2 architectures", "lenet5"],
    ),
    "usage-verify-model-and-url": (
        ["verify", "--key", "{K}", "--model", "{M}", "--url", "http://x"],
        ["not allowed with"],
    ),
    # --- argparse usage errors (the _Parser override makes them one line as well)
    "usage-no-command": ([], ["required", "COMMAND", "--help"]),
    "usage-unknown-command": (["nope"], ["invalid choice: 'nope'", "--help"]),
    "usage-verify-without-model": (
        ["verify", "--key", "{K}"],
        ["required", "--model", "ownmark verify --help"],
    ),
    "usage-keygen-without-scheme": (
        ["keygen", "--out", "{OUT}/K"],
        ["required", "--scheme", "ownmark keygen --help"],
    ),
    # --- every command has at least one case (the ones below had none)
    "list-unknown-registry": (["list", "widgets"], ["invalid choice", "'widgets'"]),
    "data-unknown-set": (["data", "download", "imagenet", "--to", "{OUT}/d"], ["'imagenet'"]),
    "env-unknown-option": (["env", "--colour"], ["unrecognized arguments", "--colour"]),
    "inspect-missing-file": (["inspect", "{MISSING}"], ["{MISSING}"]),
    "key-show-missing-file": (["key", "show", "{MISSING}"], ["key file not found"]),
    "completion-unknown-shell": (["completion", "fish"], ["'fish'"]),
    "matrix-unknown-attack": (
        ["matrix", "--out", "{OUT}/mx", "--attacks", "nope"],
        ["unknown attack 'nope'", "prune"],
    ),
    "matrix-bad-seeds": (
        ["matrix", "--out", "{OUT}/mx", "--seeds", "one,two"],
        ["--seeds", "'one,two'"],
    ),
    "matrix-out-is-a-file": (["matrix", "--out", "{M}"], ["--out", "is a file"]),
    "matrix-missing-plugin": (
        ["matrix", "--out", "{OUT}/mx", "--plugins", "no_such_plugin_module"],
        ["cannot import plugin module 'no_such_plugin_module'"],
    ),
    "matrix-zero-workers": (
        ["matrix", "--out", "{OUT}/mx", "--workers", "0"],
        ["--workers must be at least 1"],
    ),
    "matrix-chain-with-range": (
        ["matrix", "--out", "{OUT}/mx", "--attacks", "prune:rate=0.1..0.5>rtal"],
        ["cannot sweep a range"],
    ),
    "matrix-chain-unknown-step": (
        ["matrix", "--out", "{OUT}/mx", "--attacks", "rtal>nope"],
        ["unknown attack 'nope'"],
    ),
    "attack-strip-bad-fpr": (
        ["attack", "strip", "--model", "{M}", "-p", "fpr=0.9"],
        ["fpr"],
    ),
    "train-zero-epochs": (
        ["-q", "train", "--epochs", "0", "--out", "{OUT}/M2"],
        ["--epochs", "at least 1"],
    ),
    "train-out-is-a-folder": (
        ["-q", "train", "--epochs", "1", "--out", "{OUT}"],
        ["--out", "is a folder", "model.safetensors"],
    ),
    "export-onnx-is-a-folder": (
        ["export", "{M}", "--onnx", "{OUT}"],
        ["--onnx", "is a folder", "model.onnx"],
    ),
    "verify-key-is-a-folder": (
        ["verify", "--key", "{OUT}", "--model", "{M}"],
        ["is a folder, not a key file"],
    ),
    "demo-out-is-a-file": (
        ["demo", "--out", "{M}"],
        ["--out", "is a file", "folder"],
    ),
    "usage-prune-bad-sweep": (
        ["attack", "prune", "--model", "{M}", "--sweep", "rate"],
        ["sweep", "NAME=0.1..0.9", "'rate'"],
    ),
    "usage-attack-unknown": (
        ["attack", "nope", "--model", "{M}"],
        ["invalid choice: 'nope'"],
    ),
    "usage-int-option": (
        ["keygen", "--scheme", "content", "--num-keys", "ten", "--out", "{OUT}/K"],
        ["--num-keys", "invalid int value: 'ten'"],
    ),
    "usage-unknown-option": (
        ["verify", "--key", "{K}", "--model", "{M}", "--bogus"],
        ["unrecognized", "--bogus"],
    ),
    # --- data paths: the hint names a folder, never a download into an archive's name
    "train-mnist-path-is-a-tarball": (
        ["-q", "train", "--data", "mnist", "--data-path", "{NODIR}/X.tar.gz", "--out", "{OUT}/M"],
        ["CIFAR's format", "--data cifar10", "ownmark data download mnist --to {NODIR}/mnist"],
    ),
    "train-mnist-path-is-a-file": (
        ["-q", "train", "--data", "mnist", "--data-path", "{M}", "--out", "{OUT}/M"],
        ["is a file", "four IDX files in a folder", "ownmark data download mnist --to"],
    ),
    "data-download-offline-leaves-no-folder": (
        ["-q", "data", "download", "mnist", "--to", "{OUT}/data/mnist", "--mirror", "{NODIR}"],
        ["download of", "failed"],
    ),
    # --- ownmark --json: errors as usual, nothing on stdout
    "json-serve-has-no-result": (
        ["--json", "serve", "{M}"],
        ["'serve' reports no result", "drop --json"],
    ),
    "json-train-zero-epochs": (
        ["--json", "-q", "train", "--epochs", "0", "--out", "{OUT}/M2"],
        ["--epochs", "at least 1"],
    ),
}


@pytest.mark.parametrize("case", list(ERROR_CASES))
def test_bad_input_exits_2_with_one_line_and_writes_nothing(
    case: str, assets: dict[str, str], out_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv_template, fragments = ERROR_CASES[case]
    asset_folder = Path(assets["K"]).parent
    assets_before = files_in(asset_folder)

    rc, out, err = run_cli(fill(argv_template, assets, out_dir), capsys)

    assert_one_line_error(rc, out, err, *fill(fragments, assets, out_dir))
    assert ".tmp" not in err, "a temporary file name leaked into the message"
    assert files_in(out_dir) == [], "an output or temp file was left behind"
    assert files_in(asset_folder) == assets_before, "a file appeared next to the inputs"


def test_edited_key_files_differ_from_the_original_in_one_place(assets: dict[str, str]) -> None:
    """The tamper fixtures change exactly what they claim (so the refusals above mean it)."""

    def read(path: str) -> tuple[dict[str, str], dict[str, np.ndarray]]:
        with safe_open(path, framework="np") as handle:
            return dict(handle.metadata()), {n: handle.get_tensor(n) for n in handle.keys()}  # noqa: SIM118

    meta, tensors = read(assets["K"])
    for what in ("pixel", "label", "p0"):
        edited_meta, edited = read(assets[f"KEDIT_{what}"])
        changed_pixels = int((edited["images"] != tensors["images"]).sum())
        changed_labels = int((edited["labels"] != tensors["labels"]).sum())
        changed_meta = sorted(k for k in meta if meta[k] != edited_meta.get(k))
        assert (changed_pixels, changed_labels, changed_meta) == {
            "pixel": (1, 0, []),
            "label": (0, 1, []),
            "p0": (0, 0, ["p0"]),
        }[what]
        assert edited_meta["commitment"] == meta["commitment"]


# ---------------------------------------------------------------------------------------------
# positive controls: the same commands with good inputs succeed and write their files


def test_keygen_with_small_logo_writes_a_loadable_key(
    assets: dict[str, str], out_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = out_dir / "K3.safetensors"
    rc, stdout, err = run_cli(
        [
            "keygen",
            "--scheme",
            "content",
            "-p",
            f"logo={assets['SMALL']}",
            "--num-keys",
            "10",
            "--out",
            out,
            "--preview",
            out_dir / "K3.png",
        ],
        capsys,
    )
    assert (rc, err) == (0, "")
    assert f"wrote {out}" in stdout and "commitment" in stdout
    key = load_key(out)
    assert len(key) == 10 and key.params["logo"] == assets["SMALL"]
    # the 4x4 white square of the logo is stamped: triggers differ from their originals
    assert (key.images != key.originals).any()
    assert files_in(out_dir) == ["K3.png", "K3.safetensors"]


def test_keygen_with_good_parameters_succeeds(
    out_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = out_dir / "K.safetensors"
    rc, _, err = run_cli(
        [
            "keygen",
            "--scheme",
            "content",
            "-p",
            "font_size=8",
            "-p",
            "position=2,3",
            "--target-class",
            "9",
            "--num-keys",
            "10",
            "--out",
            out,
        ],
        capsys,
    )
    assert (rc, err) == (0, "")
    key = load_key(out)
    assert key.params["font_size"] == 8 and key.params["position"] == "2,3"
    assert key.labels.tolist() == [9] * 10


def test_verify_good_key_and_model_gives_a_verdict_not_an_error(
    assets: dict[str, str], out_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    report, evidence = out_dir / "r.json", out_dir / "e.json"
    argv = ["verify", "--key", assets["K"], "--model", assets["M"], "--p0", "0.05"]
    rc, out, err = run_cli([*argv, "--json", report, "--evidence", evidence], capsys)
    assert rc in (0, 1, 3), (rc, err)
    assert err == ""
    assert "verdict:" in out and "matched" in out and report.is_file()
    assert files_in(out_dir) == ["e.json", "e.md", "r.json"]


def test_preview_of_good_key_succeeds(
    assets: dict[str, str], out_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = out_dir / "P.png"
    rc, _, err = run_cli(["preview", assets["K"], "--out", out, "--count", "4"], capsys)
    assert (rc, err) == (0, "")
    with Image.open(out) as image:
        assert image.format == "PNG"


def test_prune_one_rate_with_out_writes_model_and_metrics(
    assets: dict[str, str], out_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = out_dir / "O.safetensors"
    rc, stdout, err = run_cli(
        [
            "attack",
            "prune",
            "--model",
            assets["M"],
            "--key",
            assets["K"],
            "-p",
            "rate=0.5",
            "--out",
            out,
        ],
        capsys,
    )
    assert (rc, err) == (0, "")
    assert "rate=0.5" in stdout
    assert load_model(out).spec.num_classes == 10
    assert files_in(out_dir) == ["O.json", "O.safetensors"]


def test_prune_sweep_without_out_keeps_table_metrics_and_plot(
    assets: dict[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    rc, stdout, err = run_cli(
        ["attack", "prune", "--model", assets["M"], "--sweep", "rate=0.1..0.2"], capsys
    )
    assert (rc, err) == (0, "")
    assert "rate=0.1," in stdout and "rate=0.2," in stdout
    lines = stdout.splitlines()
    assert len({line.index("%") for line in lines[1:3]}) == 1  # columns line up
    saved = tmp_path / "ownmark-attacks" / "prune-rate-sweep"
    record = json.loads(saved.with_suffix(".json").read_text())
    assert record["swept"] == "rate" and [r["attack"]["rate"] for r in record["results"]] == [
        0.1,
        0.2,
    ]
    assert saved.with_suffix(".md").read_text().splitlines()[0] == lines[0]
    assert saved.with_suffix(".png").read_bytes().startswith(b"\x89PNG")


@pytest.mark.parametrize("command", ["train", "embed"])
def test_train_and_embed_with_good_inputs_succeed(
    command: str, assets: dict[str, str], out_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = out_dir / "M2.safetensors"
    extra = ["--key", assets["K"], "--from", assets["M"]] if command == "embed" else []
    rc, _, err = run_cli(
        ["-q", command, *extra, "--model", "zhang_mnist", "--epochs", "1", "--out", out], capsys
    )
    assert (rc, err) == (0, "")
    assert load_model(out).spec.arch == "zhang_mnist"
    assert files_in(out_dir) == ["M2.json", "M2.safetensors"]


# ---------------------------------------------------------------------------------------------
# the real console script


def _console_script() -> str:
    beside_python = Path(sys.executable).with_name("ownmark")
    found = str(beside_python) if beside_python.is_file() else shutil.which("ownmark")
    assert found, "the 'ownmark' console script is not installed (pip install -e .)"
    return found


def _run_script(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run(
        [_console_script(), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )


def test_console_script_missing_key_exits_2_with_one_line(
    assets: dict[str, str], out_dir: Path
) -> None:
    report = out_dir / "r.json"
    proc = _run_script(
        "verify", "--key", assets["MISSING"], "--model", assets["M"], "--json", str(report)
    )
    assert_one_line_error(proc.returncode, proc.stdout, proc.stderr, assets["MISSING"])
    assert files_in(out_dir) == []


def test_console_script_usage_error_exits_2_with_one_line(out_dir: Path) -> None:
    proc = _run_script("keygen", "--out", str(out_dir / "K"))
    assert_one_line_error(proc.returncode, proc.stdout, proc.stderr, "--scheme")
    assert files_in(out_dir) == []


# ---------------------------------------------------------------------------------------------
# inputs that once crashed with a traceback and exit 1 (the code for "not owned")

CRASHERS: dict[str, tuple[list[str], str]] = {
    "preview-count-zero": (
        ["preview", "{K}", "--out", "{OUT}/P.png", "--count", "0"],
        "preview.py preview_grid/save_preview: --count <= 0 makes an empty image; Pillow raises "
        "ValueError('cannot write empty image'), uncaught -> traceback, exit 1",
    ),
    "negative-font-size": (
        [
            "keygen",
            "--scheme",
            "content",
            "-p",
            "font_size=-3",
            "--num-keys",
            "10",
            "--out",
            "{OUT}/K",
        ],
        "schemes/content.py ContentScheme.stamp: font_size < 0 is not checked; Pillow raises "
        "ValueError('font size must be greater than 0'), uncaught -> traceback, exit 1",
    ),
    "out-is-a-directory": (
        ["keygen", "--scheme", "content", "--num-keys", "10", "--out", "{OUT}/sub"],
        "fileio.atomic_path: os.replace onto an existing directory raises IsADirectoryError; "
        "cli.main only catches OwnmarkError -> traceback, exit 1",
    ),
    "verify-json-is-a-directory": (
        ["verify", "--key", "{K}", "--model", "{M}", "--json", "{OUT}/sub"],
        "cli.cmd_verify: writing --json fails with IsADirectoryError after the verdict is printed;"
        " traceback and exit 1, which is also the exit code for 'not owned'",
    ),
    "train-unknown-device": (
        ["-q", "train", "--device", "nope", "--epochs", "1", "--out", "{OUT}/M2"],
        "train.fit: torch.device('nope') raises RuntimeError, uncaught -> traceback, exit 1",
    ),
    "train-negative-momentum": (
        ["-q", "train", "--momentum", "-1", "--epochs", "1", "--out", "{OUT}/M2"],
        "train.TrainConfig does not check momentum; torch.optim.SGD raises ValueError, "
        "uncaught -> traceback, exit 1",
    ),
}


@pytest.mark.parametrize("case", list(CRASHERS))
def test_former_crash_gives_one_line_error(
    case: str, assets: dict[str, str], out_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (out_dir / "sub").mkdir()  # an existing folder where a file is expected
    rc, out, err = run_cli(fill(CRASHERS[case][0], assets, out_dir), capsys)
    assert_one_line_error(rc, out, err)
    assert files_in(out_dir) == ["sub"]


def test_advised_allow_factory_option_is_accepted(
    assets: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    rc, out, err = run_cli(
        ["verify", "--key", assets["K"], "--model", assets["MFACTORY"], "--allow-factory", FACTORY],
        capsys,
    )
    # the module does not exist, so even once accepted this is a one-line error, not argparse's
    assert_one_line_error(rc, out, err, FACTORY)
    assert "unrecognized arguments" not in err


def test_sweep_stays_inside_its_bounds() -> None:
    name, rates = parse_sweep("rate=0.15..0.9")
    assert name == "rate" and float(rates[0]) == 0.15 and max(map(float, rates)) <= 0.9
    assert parse_sweep("rate=0.1..0.9")[1] == [f"0.{i}" for i in range(1, 10)]
    assert parse_sweep("epochs=1..3") == ("epochs", ["1", "2", "3"])
    assert parse_sweep("rate=0.1..0.5:0.2") == ("rate", ["0.1", "0.3", "0.5"])
    assert parse_sweep("scope=global,layer") == ("scope", ["global", "layer"])
    for bad in ("rate", "rate=0.9..0.1", "rate=a..b", "=1,2"):
        with pytest.raises(ConfigError):
            parse_sweep(bad)


def test_a_key_for_other_data_names_its_data_set_and_the_fix(
    assets: dict[str, str], out_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A colour key (made for cifar10) with the default built-in digits: say which data."""
    import torch

    from ownmark.data import DataSplits, ImageDataset
    from ownmark.keys import save_key
    from ownmark.schemes import create_scheme

    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (400, 3, 32, 32), dtype=torch.uint8, generator=generator)
    labels = torch.arange(400) % 10
    classes = tuple(str(i) for i in range(10))
    split = ImageDataset(images, labels, classes, "cifar10/train")
    colour = DataSplits(split, ImageDataset(images[:100], labels[:100], classes, "cifar10/test"))
    key = create_scheme("noise", num_keys=20, num_decoys=20).generate(
        colour, seed=0, dataset="cifar10"
    )
    path = out_dir / "cifar-key.safetensors"
    save_key(key, path)
    rc, out, err = run_cli(
        ["-q", "embed", "--key", str(path), "--epochs", "1", "--out", str(out_dir / "E")], capsys
    )
    assert_one_line_error(rc, out, err, "made for cifar10", "3x32x32", "--data cifar10")
    assert sorted(p.name for p in out_dir.iterdir()) == ["cifar-key.safetensors"]
