"""``ownmark env``, ``ownmark inspect``, ``ownmark completion`` and the help every command shows.

The help test walks the real parser, so a command or option added later without a help
text, a stated default or examples fails here rather than in a user's terminal.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from cli_run import run_cli as run
from ownmark.cli import COMMANDS, main
from ownmark.cli.helptext import HelpFormatter, subcommands
from ownmark.cli.parser import build_parser
from ownmark.envinfo import auto_device, environment_report
from ownmark.keys import file_sha256, load_key, save_key
from ownmark.models import load_model, save_model
from ownmark.verify.verifier import ControlResult

LENET = Path(__file__).parent / "data" / "lenet5-0.1.0.safetensors"
_SKIPPED = (argparse._HelpAction, argparse._VersionAction, argparse._SubParsersAction)


# ---------------------------------------------------------------------------------------------
# help texts


def _all_parsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    return {"": parser, **subcommands(parser)}


def test_every_option_has_help_with_its_default_and_every_command_has_examples() -> None:
    missing: list[str] = []
    for path, parser in _all_parsers().items():
        formatter = HelpFormatter(prog="ownmark")
        for action in parser._actions:
            if isinstance(action, _SKIPPED):
                continue
            name = f"ownmark {path} {'/'.join(action.option_strings) or action.dest}"
            text = formatter._get_help_string(action)
            if not text:
                missing.append(f"{name}: no help text")
            elif action.default not in (None, False, [], argparse.SUPPRESS) and (
                "default" not in text
            ):
                missing.append(f"{name}: default {action.default!r} not stated")
        if path:
            epilog = parser.epilog or ""
            if not epilog.startswith("Examples:") or f"ownmark {path}" not in epilog:
                missing.append(f"ownmark {path}: no 'Examples:' epilog using the command")
        parser.format_help()  # renders (a stray % in a help text would raise here)
    assert missing == []


def test_every_registered_command_is_in_the_parser_and_has_a_handler() -> None:
    top = {path for path in subcommands(build_parser()) if " " not in path}
    assert top == set(COMMANDS)


def test_top_level_help_is_written_for_users(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = run(["--help"], capsys)
    assert rc == 0
    for fragment in ("keygen", "embed", "verify", "Exit codes", "0 success", "Examples:"):
        assert fragment in out
    assert "Thin by design" not in out  # not the module docstring
    # Options state their defaults even where the author did not write them out.
    rc, out, _ = run(["serve", "--help"], capsys)
    assert "(default: 256)" in " ".join(out.split())


def test_demo_help_says_its_run_time_and_what_it_writes(
    capsys: pytest.CaptureFixture[str],
) -> None:
    rc, out, _ = run(["demo", "--help"], capsys)
    text = " ".join(out.split())
    assert rc == 0
    for fragment in ("100 s on 2 CPU cores", "README.md", "key.safetensors", "evidence/"):
        assert fragment in text


# ---------------------------------------------------------------------------------------------
# env


def test_env_json_reports_versions_build_device_and_machine(
    capsys: pytest.CaptureFixture[str],
) -> None:
    rc, out, err = run(["env", "--json"], capsys)
    assert rc == 0 and err == ""
    report = json.loads(out)
    assert report["torch"]["version"] == torch.__version__
    assert report["torch"]["build"].split()[0] in ("CPU", "CUDA", "ROCm")
    assert report["device"] == auto_device() in ("cuda", "mps", "cpu")
    assert report["torch"]["threads"] == torch.get_num_threads()
    assert report["packages"]["numpy"] and report["packages"]["safetensors"]
    assert set(report["packages"]) >= {"fastapi", "uvicorn", "httpx", "onnxruntime", "mlserver"}
    assert report["platform"]["cores"] == os.cpu_count()
    assert report == json.loads(json.dumps(environment_report()))  # same fields, JSON-safe


def test_env_text_names_each_part(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = run(["env"], capsys)
    assert rc == 0
    for fragment in ("ownmark", "python", f"torch        {torch.__version__}", "device", "cpu"):
        assert fragment in out


def test_env_never_prints_a_token(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OWNMARK_TOKEN", "s3cret-value")
    rc, out, _ = run(["env", "--json"], capsys)
    assert rc == 0 and "s3cret-value" not in out
    assert json.loads(out)["variables"]["OWNMARK_TOKEN"] == "(set)"


# ---------------------------------------------------------------------------------------------
# inspect


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A seeded noise key, a calibrated copy, a model with metadata, and an evidence file."""
    folder = tmp_path_factory.mktemp("inspect")
    key_path = folder / "key.safetensors"
    assert main(["-q", "keygen", "--scheme", "noise", "--seed", "3", "--out", str(key_path)]) == 0
    source = {
        "method": "test",
        "confidence": 0.999,
        "matches": 3,
        "trials": 400,
        "dropped": 1,
        "references": ["ref1 (lenet5, clean)", "ref2 (zhang_mnist, other-key)"],
        "groups": {"clean": [1, 2, 200]},
        "innocent_tail": 0.001,
        "innocent_tail_bound": 0.33,
    }
    calibrated = folder / "calibrated.safetensors"
    save_key(load_key(key_path).with_p0(0.02, json.dumps(source)), calibrated)
    model_path = folder / "marked.safetensors"
    metadata = {"test_accuracy": "0.987500", "seed": "5", "key_commitment": "ab" * 32}
    save_model(load_model(LENET), model_path, metadata)
    evidence = folder / "case.json"
    argv = ["-q", "verify", "--key", key_path, "--model", LENET, "--evidence", evidence]
    assert main([str(a) for a in argv]) in (0, 1, 3)
    return {"key": key_path, "calibrated": calibrated, "model": model_path, "evidence": evidence}


def _inspect_json(path: Path, capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    rc, out, err = run(["inspect", path, "--json"], capsys)
    assert rc == 0 and err == "", err
    info: dict[str, Any] = json.loads(out)
    return info


def test_inspect_key_shows_scheme_parameters_plan_and_commitment(
    files: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    key = load_key(files["key"])
    info = _inspect_json(files["key"], capsys)
    assert info["kind"] == "key" and info["commitment"] == key.commitment
    assert info["scheme"] == "noise" and info["params"] == key.params
    assert info["secret_params"] == key.params.get("secret", [])
    assert (info["key_samples"], info["decoys"]) == (len(key), len(key.decoys))
    assert (info["dataset"], info["num_classes"], info["extra_classes"]) == ("digits", 10, 0)
    assert (info["seed"], info["seed_source"]) == (3, "given")
    assert (info["p0"], info["p0_source"], info["p0_calibrated"]) == (0.5, "assumed", False)
    assert (info["alpha"], info["max_queries"]) == (key.alpha, key.max_queries)
    assert info["timestamp"] is False
    # The noise scheme keeps its secret pattern as an extra tensor, under the commitment.
    assert info["extra_tensors"] == {
        name: {"dtype": str(t.dtype).removeprefix("torch."), "shape": list(t.shape)}
        for name, t in key.extra.items()
    }
    assert "pattern" in info["extra_tensors"]

    rc, out, _ = run(["inspect", files["key"]], capsys)
    assert rc == 0
    assert "ownmark key file" in out and "secret" in out and key.commitment in out
    # 'key show' prints the same description (one formatter for both commands).
    rc, shown, _ = run(["key", "show", files["key"]], capsys)
    assert rc == 0 and shown in out
    rc, shown_json, _ = run(["key", "show", files["key"], "--json"], capsys)
    assert json.loads(shown_json) == info


def test_inspect_calibrated_key_lists_p0_references(
    files: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    info = _inspect_json(files["calibrated"], capsys)
    assert info["p0"] == 0.02 and info["p0_calibrated"] is True
    assert info["p0_source"]["references"] == [
        "ref1 (lenet5, clean)",
        "ref2 (zhang_mnist, other-key)",
    ]
    _, out, _ = run(["inspect", files["calibrated"]], capsys)
    assert "ref1 (lenet5, clean)" in out and "0.999 confidence" in out and "3/400" in out


def test_inspect_model_reads_the_header_only(
    files: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    info = _inspect_json(files["model"], capsys)
    model = load_model(files["model"])
    assert info["kind"] == "model" and info["arch"] == "lenet5"
    assert info["num_classes"] == 10 and info["input_shape"] == [1, 28, 28]
    assert info["mean"] == [0.1307] and info["std"] == [0.3081]
    assert info["parameters"] == sum(p.numel() for p in model.parameters())
    assert info["sha256"] == file_sha256(files["model"])
    assert info["test_accuracy"] == 0.9875 and info["seed"] == "5"
    assert info["key_commitment"] == "ab" * 32
    _, out, _ = run(["inspect", files["model"]], capsys)
    assert "architecture lenet5" in out and "98.75%" in out and "ab" * 32 in out


def test_inspect_evidence_shows_verdict_suspect_and_control(
    files: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    doc = json.loads(files["evidence"].read_text())
    info = _inspect_json(files["evidence"], capsys)
    assert info["kind"] == "evidence" and info["format_version"] == doc["format_version"]
    assert info["verdict"] == doc["result"]["verdict"]
    assert info["p_value"] == doc["result"]["p_value"]
    assert info["suspect"]["address"] == doc["suspect"]["address"]
    assert info["key"]["commitment"] == load_key(files["key"]).commitment
    assert info["queries"] == doc["result"]["queries"] and info["signed"] is False
    assert info["control"]["passed"] == ControlResult(**doc["control"]).passed
    _, out, _ = run(["inspect", files["evidence"]], capsys)
    assert f"verdict {doc['result']['verdict'].upper()}" in out and "unsigned" in out


def _bad_files(folder: Path, files: dict[str, Path]) -> dict[str, tuple[Path, str]]:
    """name -> (path, fragment the one-line error must hold)."""
    key_bytes = files["key"].read_bytes()
    cases: dict[str, tuple[bytes | None, str]] = {
        "text": (b"hello\n", "not an ownmark key, model or evidence file"),
        "empty": (b"", "not an ownmark key, model or evidence file"),
        "json-not-evidence": (b'{"a": 1}', "not an ownmark evidence file"),
        "json-broken": (b'{"format": ', "not a readable JSON evidence file"),
        "truncated-key": (key_bytes[: len(key_bytes) // 2], "truncated or corrupt"),
        "header-only": (key_bytes[:20], "truncated or corrupt"),
        "missing": (None, "not found"),
    }
    doc = json.loads(files["evidence"].read_text())
    del doc["result"]
    cases["evidence-without-result"] = (json.dumps(doc).encode(), "'result'")
    doc = json.loads(files["evidence"].read_text())
    doc["result"]["p_value"] = float("nan")  # json writes NaN; --json must not
    cases["evidence-nan-p-value"] = (json.dumps(doc).encode(), "non-finite")
    edited = bytearray(key_bytes)
    edited[-1] ^= 0xFF  # one tensor byte: the commitment no longer matches
    cases["edited-key"] = (bytes(edited), "commitment")
    out: dict[str, tuple[Path, str]] = {}
    for name, (content, fragment) in cases.items():
        path = folder / f"{name}.bin"
        if content is not None:
            path.write_bytes(content)
        out[name] = (path, fragment)
    out["folder"] = (folder, "is a folder")
    return out


def test_inspect_bad_files_one_line_exit_2(
    files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    cases = _bad_files(inputs, files)
    before = sorted(p.name for p in inputs.iterdir())
    for name, (path, fragment) in cases.items():
        rc, out, err = run(["inspect", path, "--json"], capsys)
        assert rc == 2 and out == "", (name, out)
        assert err.startswith("ownmark: error: ") and err.count("\n") == 1, (name, err)
        assert fragment in err and "Traceback" not in err, (name, err)
    assert sorted(p.name for p in inputs.iterdir()) == before  # nothing written


# ---------------------------------------------------------------------------------------------
# shell completion


def _complete(line: str, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """What argcomplete offers after ``line`` (in-process, as the shell hook would ask)."""
    argcomplete = pytest.importorskip("argcomplete")
    monkeypatch.setenv("_ARGCOMPLETE", "1")
    monkeypatch.setenv("COMP_LINE", line)
    monkeypatch.setenv("COMP_POINT", str(len(line)))
    monkeypatch.setenv("_ARGCOMPLETE_IFS", "\n")

    class Finder(argcomplete.CompletionFinder):
        def _init_debug_stream(self) -> None:
            """Keep argcomplete's default (stderr): fd 9 belongs to pytest's faulthandler."""

    stream = io.StringIO()
    Finder()(build_parser(), output_stream=stream, exit_method=lambda *a: None)
    return [word.strip() for word in stream.getvalue().split("\n") if word.strip()]


def test_completion_lists_every_command_and_sub_command_and_option(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    parsers = _all_parsers()
    assert set(_complete("ownmark ", monkeypatch)) >= set(COMMANDS)
    for path, parser in parsers.items():
        line = f"ownmark {path} " if path else "ownmark "
        children = {p.split()[-1] for p in parsers if p and p.rpartition(" ")[0] == path}
        assert set(_complete(line, monkeypatch)) >= children, path
        options = {o for a in parser._actions for o in a.option_strings if o.startswith("--")}
        offered = set(_complete(line + "--", monkeypatch))
        assert offered >= options, (path, options - offered)


def test_completion_command_prints_the_activation_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    pytest.importorskip("argcomplete")
    for shell in ("bash", "zsh"):
        rc, out, _ = run(["completion", shell], capsys)
        assert rc == 0 and 'eval "$(register-python-argcomplete ownmark)"' in out
    rc, out, _ = run(["completion", "bash", "--script"], capsys)
    assert rc == 0 and "complete " in out and "ownmark" in out


def test_completion_without_argcomplete_says_how_to_install(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("argcomplete", "argcomplete.shell_integration"):
        monkeypatch.setitem(sys.modules, name, None)  # importing it fails
    rc, out, err = run(["completion", "bash"], capsys)
    assert rc == 2 and out == "" and err.count("\n") == 1
    assert "pip install 'ownmark[completion]'" in err


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_bash_completes_a_command_through_the_real_script(tmp_path: Path) -> None:
    """The generated script, sourced in bash, asks the installed ``ownmark`` and completes."""
    pytest.importorskip("argcomplete")
    if shutil.which("ownmark") is None:
        pytest.skip("the ownmark console script is not on PATH")
    script = subprocess.run(
        ["ownmark", "completion", "bash", "--script"], capture_output=True, text=True, check=True
    ).stdout
    (tmp_path / "ownmark.bash").write_text(script)
    probe = (
        f"source {tmp_path / 'ownmark.bash'}; COMP_WORDS=(ownmark ins); COMP_CWORD=1; "
        'COMP_LINE="ownmark ins"; COMP_POINT=11; _python_argcomplete ownmark ins ownmark; '
        'echo "${COMPREPLY[@]}"'
    )
    done = subprocess.run(["bash", "-c", probe], capture_output=True, text=True, timeout=60)
    assert done.stdout.split() == ["inspect"], done.stderr
