"""The README's Python snippet runs as written (in a reduced configuration), and the library
fails at once, with the CLI's message, when a suspect's server cannot be reached at all."""

from __future__ import annotations

import re
import socket
from pathlib import Path

import pytest

from ownmark.data import DataSplits
from ownmark.schemes import create_scheme
from ownmark.verify import SuspectUnreachable, verify_ownership
from ownmark.verify.remote import HttpPolicy, V2Suspect

README = Path(__file__).resolve().parents[1] / "README.md"


def _python_snippet() -> str:
    text = README.read_text()
    section = text[text.index("## Python API") :]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, "the README's Python API section has no python block"
    return match.group(1)


def test_readme_python_snippet_runs_top_to_bottom(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    code = _python_snippet()
    # Reduced: 2 epochs instead of 8 (the flow and every call stay as written).
    reduced = code.replace("epochs=8", "epochs=2")
    assert reduced != code, "the snippet's epochs changed: update this test's reduction"
    monkeypatch.chdir(tmp_path)
    exec(compile(reduced, str(README), "exec"), {"__name__": "readme"})
    printed = capsys.readouterr().out.split()
    # Human words, not an enum's repr: "owned"/"not owned"/"inconclusive", then numbers.
    assert printed and "Verdict." not in " ".join(printed)
    assert printed[0] in ("owned", "not", "inconclusive")
    assert (tmp_path / "case.json").is_file() and (tmp_path / "case.md").is_file()


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_library_fails_at_once_when_the_server_cannot_be_reached(digits: DataSplits) -> None:
    key = create_scheme("noise", num_keys=40).generate(digits, seed=0).with_p0(0.1, "test")
    url = f"http://127.0.0.1:{_closed_port()}/v2/models/m"
    with V2Suspect(url, policy=HttpPolicy(retries=1, backoff=0.01)) as suspect:
        with pytest.raises(SuspectUnreachable, match=r"cannot connect to http://127\.0\.0\.1"):
            verify_ownership(key, suspect)
        assert suspect.counters.errors == 1  # one request (with its retry), then it stopped
