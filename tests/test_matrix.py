"""The robustness matrix runner: executors (local processes, Ray), resume after a kill,
crashed cells, chained attacks and the SoK removal criterion."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from cli_run import run_cli
from ownmark.attacks import create_attack
from ownmark.attacks.base import AttackData
from ownmark.attacks.chain import ChainedAttack
from ownmark.attacks.defence import DefendedSuspect
from ownmark.attacks.prune import prunable_weights
from ownmark.errors import ConfigError
from ownmark.executors import InlineExecutor, ProcessExecutor, TaskError
from ownmark.matrix import (
    MatrixConfig,
    crashed_cells,
    expand_attack_specs,
    removal_succeeded,
    render_matrix,
    run_matrix,
)
from ownmark.models import ModelSpec, build_model

#: Two schemes x two attacks, small enough for the test suite (models on the built-in digits).
CONFIG = MatrixConfig(
    schemes=("content", "noise"),
    attacks=("prune:rate=0.3", "quantize:bits=4"),
    epochs=3,
    num_keys=30,
    served=False,
)
#: What must be the same whoever runs a cell.
STABLE = ("verdict", "p_value", "key_queries", "watermark_accuracy", "test_accuracy")


def _stable(cell: dict[str, Any]) -> dict[str, Any]:
    return {k: cell[k] for k in STABLE}


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The 2x2 matrix, run once in a local worker process."""
    out = tmp_path_factory.mktemp("matrix")
    lines: list[str] = []
    with ProcessExecutor(workers=1) as executor:
        cells = run_matrix(CONFIG, out, report=lines.append, executor=executor)
    assert not crashed_cells(cells)
    render_matrix(cells, out)
    return out


def _copy(finished: Path, tmp_path: Path) -> Path:
    target = tmp_path / "copy"
    shutil.copytree(finished, target)
    return target


def _stamps(folder: Path) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in folder.iterdir() if p.suffix == ".json"}


def test_two_by_two_matrix_in_worker_processes(finished: Path) -> None:
    cells = json.loads((finished / "matrix.json").read_text())["cells"]
    assert {(c["scheme"], c["attack"]) for c in cells} == {
        (s, a) for s in CONFIG.schemes for a in ("none", *CONFIG.attacks)
    }
    untouched = [c for c in cells if c["attack"] == "none"]
    assert all(c["verdict"] == "owned" for c in untouched)
    assert all(c["watermark_accuracy"] >= 0.9 for c in untouched)
    table = (finished / "matrix.md").read_text()
    assert "| content |" in table and "| noise |" in table and "## Who wins" in table


def test_rerun_redoes_nothing_and_reports_each_step(finished: Path, tmp_path: Path) -> None:
    out = _copy(finished, tmp_path)
    before = _stamps(out / "cells")
    lines: list[str] = []
    cells = run_matrix(CONFIG, out, report=lines.append, executor=InlineExecutor())
    assert _stamps(out / "cells") == before
    assert len(cells) == 6
    assert sum("earlier run" in line for line in lines) == len(lines) == 2 + 2 + 6


def test_crashed_cell_is_reported_and_retried(
    finished: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = _copy(finished, tmp_path)
    before = _stamps(out / "cells")
    argv = ["matrix", "--out", out, "--schemes", "content,noise", "--epochs", "3",
            "--num-keys", "30", "--in-process",
            "--attacks", "prune:rate=0.3,quantize:bits=4,test-crash",
            "--plugins", "matrix_plugins"]  # fmt: skip
    rc, _, err = run_cli(argv, capsys)
    assert rc == 2, err
    assert "2 of 8 cells crashed" in err
    errors = sorted((out / "cells").glob("*.error.json"))
    assert [p.name for p in errors] == [
        "content__test-crash__s0.error.json",
        "noise__test-crash__s0.error.json",
    ]
    record = json.loads(errors[0].read_text())
    assert record["error"] == "RuntimeError: this attack always fails"
    assert "Traceback" in record["traceback"]
    table = (out / "matrix.md").read_text()
    assert "crashed 1/1" in table and "## Crashed cells (2; a rerun retries them)" in table
    assert all(p.stat().st_mtime_ns == t for p, t in before.items())  # finished cells kept
    # The next run retries the crashed cells (and only them).
    stamp = errors[0].stat().st_mtime_ns
    time.sleep(0.01)
    assert run_cli(argv, capsys)[0] == 2
    assert errors[0].stat().st_mtime_ns > stamp
    assert all(p.stat().st_mtime_ns == t for p, t in before.items())


def test_a_killed_run_resumes_without_redoing_cells(finished: Path, tmp_path: Path) -> None:
    out = _copy(finished, tmp_path)
    for cell in (out / "cells").glob("*.json"):
        cell.unlink()
    config = tmp_path / "m.json"
    attacks = ["prune:rate=0.1..0.9", "quantize:bits=4"]
    settings = {**json.loads((out / "config.json").read_text())["config"], "attacks": attacks}
    config.write_text(json.dumps(settings))
    command = [sys.executable, "-m", "ownmark", "matrix", "--out", str(out), "--config",
               str(config), "--executor", "inline"]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    try:
        while len(list((out / "cells").glob("*.json"))) < 3:
            assert process.poll() is None, "the run ended before it could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
    kept = _stamps(out / "cells")
    assert 3 <= len(kept) < 2 * 11
    lines: list[str] = []
    cells = run_matrix(
        MatrixConfig.from_file(config), out, report=lines.append, executor=InlineExecutor()
    )
    assert len(cells) == 2 * 11 and not crashed_cells(cells)
    assert all(p.stat().st_mtime_ns == t for p, t in kept.items())
    assert sum("done by an earlier run" in line for line in lines) == len(kept)
    paths = render_matrix(cells, out)
    assert paths["pruning"].read_bytes().startswith(b"\x89PNG")  # nine rates: a curve


def test_ray_executor_reproduces_a_cell(finished: Path, tmp_path: Path) -> None:
    pytest.importorskip("ray")
    from ownmark.executors import RayExecutor

    out = _copy(finished, tmp_path)
    cell = out / "cells" / "noise__prune_rate_0.3__s0.json"
    original = json.loads(cell.read_text())
    cell.unlink()
    lines: list[str] = []
    with RayExecutor(address=None) as executor:  # a local Ray runtime, started here
        cells = run_matrix(CONFIG, out, report=lines.append, executor=executor)
    assert cell.is_file()
    assert _stable(json.loads(cell.read_text())) == _stable(original)
    assert [c for c in cells if c["attack"] == "prune:rate=0.3" and c["scheme"] == "noise"]
    assert sum("earlier run" not in line for line in lines) == 1  # only that cell ran


def test_executor_turns_exceptions_into_task_errors() -> None:
    outcomes = dict(InlineExecutor().run(int, [("7",), ("seven",)]))
    assert outcomes[0] == 7
    assert isinstance(outcomes[1], TaskError) and outcomes[1].kind == "ValueError"


def test_removal_needs_a_lost_verdict_and_little_accuracy_loss() -> None:
    untouched = {"verdict": "owned", "test_accuracy": 0.98}

    def cell(verdict: str, test: float, refusal: float | None = None) -> dict[str, Any]:
        return {"verdict": verdict, "test_accuracy": test, "refusal_rate": refusal}

    assert removal_succeeded(cell("not owned", 0.94), untouched)
    assert not removal_succeeded(cell("owned", 0.97), untouched)
    assert not removal_succeeded(cell("not owned", 0.92), untouched)  # 6 points lost
    assert removal_succeeded(cell("inconclusive", 0.97, 0.004), untouched)
    assert not removal_succeeded(cell("not owned", 0.97, 0.02), untouched)  # refuses 2%
    assert not removal_succeeded({"error": "boom"}, untouched)
    assert not removal_succeeded(cell("not owned", 0.97), None)


def test_chains_are_columns_and_run_in_order(small_digits: Any) -> None:
    assert expand_attack_specs(["prune:rate=0.5>quantize:bits=2", "prune:rate=0.1..0.2"]) == (
        "prune:rate=0.5>quantize:bits=2",
        "prune:rate=0.1",
        "prune:rate=0.2",
    )
    with pytest.raises(ConfigError, match="cannot sweep"):
        expand_attack_specs(["prune:rate=0.1..0.5>quantize"])
    with pytest.raises(ConfigError, match="unknown attack"):
        MatrixConfig(attacks=("prune>nope",))
    torch.manual_seed(0)
    model = build_model(ModelSpec.with_defaults("lenet5", 10, 1, (28, 28)))
    chain = ChainedAttack([create_attack("prune", rate=0.5), create_attack("quantize", bits=2)])
    attacked = chain(model, AttackData())
    assert isinstance(attacked, torch.nn.Module)
    for _, weight in prunable_weights(attacked):
        assert len(torch.unique(weight)) <= 4
    assert chain.config()["steps"][0] == {
        "attack": "prune",
        "seed": 0,
        "rate": 0.5,
        "scope": "global",
    }
    defended = ChainedAttack([create_attack("prune", rate=0.5), create_attack("preprocess")])(
        model, AttackData()
    )
    assert isinstance(defended, DefendedSuspect)
    wrong = ChainedAttack([create_attack("preprocess"), create_attack("prune")])
    with pytest.raises(ConfigError, match="can only be the last step"):
        wrong(model, AttackData())
