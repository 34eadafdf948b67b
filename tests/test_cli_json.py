"""``ownmark --json COMMAND``: the command's result as one JSON object on stdout, nothing else.

The human text goes to stderr; exit codes are the command's own; ``verify --json FILE`` still
writes its file. Small runs (built-in digits, one epoch on 500 images) keep this file fast.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from cli_run import run_cli as run
from ownmark.cli import main

FAST = ["--epochs", "1", "--train-subset", "500", "--test-subset", "300"]


def run_json(
    argv: Sequence[object], capsys: pytest.CaptureFixture[str], expect_rc: int | None = 0
) -> dict[str, Any]:
    """``ownmark --json -q ARGV``: its stdout parsed (it must be exactly one JSON object)."""
    rc, out, err = run(["--json", "-q", *argv], capsys)
    if expect_rc is not None:
        assert rc == expect_rc, (rc, out, err)
    document = json.loads(out)
    assert isinstance(document, dict)
    assert document["exit_code"] == rc
    return document


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A key, a clean reference and a watermarked model, made once."""
    folder = tmp_path_factory.mktemp("json")
    key, clean = folder / "key.safetensors", folder / "clean.safetensors"
    clean2 = folder / "clean2.safetensors"
    marked = folder / "marked.safetensors"
    for argv in (
        # 100 key samples (the default): enough to reach alpha with the uncalibrated p0
        ["-q", "keygen", "--scheme", "content", "--out", key],
        ["-q", "train", *FAST, "--out", clean],
        ["-q", "train", *FAST, "--model", "lenet5", "--seed", "3", "--out", clean2],
        ["-q", "embed", "--key", key, *FAST, "--out", marked],
    ):
        assert main([str(a) for a in argv]) == 0
    return {"folder": folder, "key": key, "clean": clean, "clean2": clean2, "marked": marked}


def test_list_gives_names_summaries_and_params(capsys: pytest.CaptureFixture[str]) -> None:
    document = run_json(["list"], capsys)
    assert document["command"] == "list"
    for plural in ("schemes", "attacks", "models", "datasets", "protocols", "backends"):
        assert document[plural], plural
    content = next(e for e in document["schemes"] if e["name"] == "content")
    assert content["summary"] and content["params"]["num_keys"]["default"] == 100
    assert list(run_json(["list", "attacks"], capsys)) == ["command", "attacks", "exit_code"]


def test_train_and_embed_give_the_metrics_record(
    tmp_path: Path, files: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "t.safetensors"
    document = run_json(["train", *FAST, "--out", out], capsys)
    assert document["command"] == "train"
    assert document["metrics"]["task"] == "train"
    assert document["metrics"]["epochs"] == 1
    assert 0.0 <= document["metrics"]["test_accuracy"] <= 1.0
    assert document["files"] == {"model": str(out), "metrics": str(out.with_suffix(".json"))}
    assert json.loads(out.with_suffix(".json").read_text()) == document["metrics"]

    key = tmp_path / "key.safetensors"
    key.write_bytes(files["key"].read_bytes())
    document = run_json(["embed", "--key", key, *FAST, "--out", tmp_path / "e.safetensors"], capsys)
    assert document["command"] == "embed"
    assert document["metrics"]["watermark_accuracy"] is not None
    assert document["metrics"]["key_commitment"]
    assert document["files"]["key"] == str(key)


def test_keygen_and_calibrate_give_commitment_and_p0(
    tmp_path: Path, files: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    key = tmp_path / "k.safetensors"
    document = run_json(["keygen", "--scheme", "noise", "--num-keys", "20", "--out", key], capsys)
    assert document["command"] == "keygen"
    assert len(document["commitment"]) == 64 and document["key"] == str(key)
    assert document["scheme"] == "noise" and document["samples"] == 20
    assert document["p0_calibrated"] is False and document["calibration"] is None

    out = tmp_path / "calibrated.safetensors"
    references = [files["clean"], files["clean2"], "--min-reference-accuracy", "0"]
    document = run_json(
        ["calibrate", files["key"], "--out", out, "--reference", *references, "--allow-weak-key"],
        capsys,
    )
    assert document["command"] == "calibrate" and document["p0_calibrated"] is True
    assert 0.0 < document["p0"] < 1.0 and document["key"] == str(out)
    calibration = document["calibration"]
    assert [r["name"] for r in calibration["references"]] == ["clean", "clean2"]
    assert calibration["groups"]["clean"]["models"] == 2


def test_attack_gives_its_rows(
    tmp_path: Path, files: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    document = run_json(
        [
            "attack",
            "prune",
            "--model",
            files["marked"],
            "--key",
            files["key"],
            "--test-subset",
            "200",
            "--sweep",
            "rate=0.2,0.6",
            "--metrics",
            tmp_path / "sweep.json",
        ],
        capsys,
    )
    assert document["command"] == "attack prune" and document["swept"] == "rate"
    assert [row["attack"]["rate"] for row in document["rows"]] == [0.2, 0.6]
    assert all("watermark_accuracy" in row for row in document["rows"])
    assert document["files"]["metrics"] == str(tmp_path / "sweep.json")


def test_verify_and_evidence_check(
    tmp_path: Path, files: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    evidence, summary = tmp_path / "ev.json", tmp_path / "summary.json"
    argv = ["verify", "--key", files["key"], "--model", files["marked"]]
    document = run_json([*argv, "--evidence", evidence, "--json", summary], capsys, None)
    assert document["command"] == "verify"
    assert document["verdict"] in ("owned", "not owned", "inconclusive")
    for field in ("p_value", "matches", "queries", "alpha", "p0", "key_commitment"):
        assert field in document, field
    assert document["evidence"] == str(evidence) and evidence.is_file()
    # 'verify --json FILE' still writes the summary file, the same numbers.
    written = json.loads(summary.read_text())
    assert written["verdict"] == document["verdict"]
    assert written["matches"] == document["matches"]

    check = run_json(["evidence", "check", evidence, "--key", files["key"]], capsys, 4)
    assert check["command"] == "evidence check"
    assert check["valid"] is True and check["trusted"] is False
    assert check["verdict"] == document["verdict"]
    assert check["problems"] == [] and isinstance(check["notes"], list)


def test_human_text_goes_to_stderr_and_without_json_nothing_changes(
    tmp_path: Path, files: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    rc, out, err = run(
        ["--json", "-q", "preview", files["key"], "--out", tmp_path / "p.png"], capsys
    )
    assert rc == 0 and json.loads(out)["files"]["preview"] == str(tmp_path / "p.png")
    assert f"wrote {tmp_path / 'p.png'}" in err
    rc, out, _ = run(["-q", "preview", files["key"], "--out", tmp_path / "q.png"], capsys)
    assert rc == 0 and out.startswith("wrote ")


def test_commands_with_their_own_json_print_it(
    files: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    rc, out, _ = run(["--json", "key", "show", files["key"]], capsys)
    assert rc == 0 and json.loads(out)["scheme"] == "content"
    rc, out, _ = run(["--json", "inspect", files["marked"]], capsys)
    assert rc == 0 and isinstance(json.loads(out), dict)


def test_a_command_without_a_result_refuses_json(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, err = run(["--json", "completion", "bash"], capsys)
    assert rc == 2 and out == ""
    assert "'completion' reports no result" in err and err.count("\n") == 1


def test_demo_gives_its_rows_and_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The demo's record (the real run takes minutes: its summary is stubbed here)."""
    from ownmark import demo

    row = demo.DemoRow("watermarked", 0.9, 1.0, 30, 30, 1e-9, "owned", "owned", "e.json")
    summary = demo.DemoSummary(rows=[row], config={"scheme": "content", "p0": 0.1})
    summary.files = [str(tmp_path / "README.md")]
    monkeypatch.setattr(demo, "run_demo", lambda out, **options: summary)
    document = run_json(["demo", "--out", tmp_path], capsys)
    assert document["command"] == "demo" and document["correct"] is True
    assert document["rows"][0]["verdict"] == "owned"
    assert document["rows"][0]["adjusted_p_value"] == 1e-9
    assert document["files"] == summary.files
    assert document["config"]["scheme"] == "content"
