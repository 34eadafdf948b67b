"""End to end on the built-in MNIST digits: a watermarked model verifies, a clean one does not."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from ownmark.demo import run_demo
from ownmark.keys import load_key
from ownmark.models import load_model
from ownmark.verify.evidence import check_evidence


def test_demo_verdicts(tmp_path: Path) -> None:
    summary = run_demo(tmp_path, epochs=4, finetune_epochs=2, progress=False)
    rows = {row.model: row for row in summary.rows}
    assert rows["clean"].verdict == "not owned"
    assert rows["clean"].watermark_accuracy <= 0.2
    # Another owner's model, watermarked with the same scheme and defaults: not ours.
    assert rows["other-owner"].verdict == "not owned"
    assert rows["other-owner"].watermark_accuracy <= 0.3
    assert rows["watermarked"].verdict == "owned"
    assert rows["watermarked"].watermark_accuracy >= 0.95
    assert rows["watermarked"].test_accuracy >= 0.85
    assert rows["pruned50"].verdict == "owned"
    assert rows["finetuned"].verdict == "owned"
    assert summary.correct
    key = load_key(tmp_path / "key.safetensors")
    # Calibrated on clean and other-key references: a small p0, so a few queries decide.
    assert key.p0 < 0.25 and rows["watermarked"].queries <= 20
    assert key.released_model_sha256  # bound to the released watermarked model
    calibration = json.loads((tmp_path / "calibration.json").read_text())
    assert {r["group"] for r in calibration["references"]} == {"clean", "other-key"}
    for name in (
        "clean",
        "other-owner",
        "watermarked",
        "watermarked-pruned50",
        "watermarked-finetuned",
    ):
        load_model(tmp_path / f"{name}.safetensors")
    assert key.commitment == json.loads((tmp_path / "summary.json").read_text())["key_commitment"]
    for row in summary.rows:
        check = check_evidence(row.evidence, key)
        assert check.valid and check.verdict == row.verdict
    assert "| watermarked | " in (tmp_path / "summary.md").read_text()
    assert not list(tmp_path.glob(".*tmp"))


def _ownmark(*args: str | Path) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "ownmark.cli", "-q", *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)


def test_cli_flow_and_exit_codes(tmp_path: Path) -> None:
    key, clean, marked = (
        tmp_path / "k.safetensors",
        tmp_path / "c.safetensors",
        tmp_path / "w.safetensors",
    )
    # A given seed: the key's secret label map and trigger are then the same on every run.
    keygen = ("keygen", "--scheme", "noise", "--seed", "3", "--out", key, "--num-keys", "50")
    assert _ownmark(*keygen).returncode == 0
    committed = load_key(key).commitment
    assert _ownmark("train", "--epochs", "3", "--out", clean).returncode == 0
    done = _ownmark(
        "embed",
        "--key",
        key,
        "--epochs",
        "4",
        "--key-ratio",
        "0.35",
        "--seed",
        "1",
        "--out",
        marked,
    )
    assert done.returncode == 0, done.stderr
    metrics = json.loads(marked.with_suffix(".json").read_text())
    # Float results differ slightly between CPUs; the verdict below is the real check.
    assert metrics["watermark_accuracy"] >= 0.9
    assert metrics["seed"] == 1 and metrics["config"]["epochs"] == 4 and metrics["seconds"] > 0
    assert metrics["key_commitment"] == committed
    # embed rewrote the key: its commitment now binds the released model file.
    import hashlib

    bound = load_key(key)
    assert bound.released_model_sha256 == hashlib.sha256(marked.read_bytes()).hexdigest()
    assert bound.commitment != committed and "time-stamp it" in done.stdout

    owned = _ownmark(
        "verify",
        "--key",
        key,
        "--model",
        marked,
        "--json",
        tmp_path / "v.json",
        "--evidence",
        tmp_path / "e1.json",
    )
    assert owned.returncode == 0, owned.stdout
    assert "verdict: owned" in owned.stdout
    assert json.loads((tmp_path / "v.json").read_text())["verdict"] == "owned"
    not_owned = _ownmark(
        "verify", "--key", key, "--model", clean, "--evidence", tmp_path / "e2.json"
    )
    assert not_owned.returncode == 1, not_owned.stdout
    assert "verdict: not owned" in not_owned.stdout

    sweep = _ownmark(
        "attack",
        "prune",
        "--model",
        marked,
        "--key",
        key,
        "--sweep",
        "rate=0.1..0.9",
        "--metrics",
        tmp_path / "sweep.json",
    )
    assert sweep.returncode == 0, sweep.stderr
    rows = json.loads((tmp_path / "sweep.json").read_text())["results"]
    assert (tmp_path / "sweep.png").read_bytes().startswith(b"\x89PNG")
    assert [r["attack"]["rate"] for r in rows] == [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
