"""Evidence files: written atomically, re-checked against the key, any edit detected."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
import torch

from ownmark.cli import main
from ownmark.data import DataSplits
from ownmark.errors import EvidenceError
from ownmark.keys import KeySet, save_key
from ownmark.schemes import create_scheme
from ownmark.verify import Verdict, verify_ownership
from ownmark.verify.evidence import (
    check_evidence,
    generate_signing_key,
    load_evidence,
    write_evidence,
)
from scripted import Watermarked


class Answers(Watermarked):
    """A watermarked suspect behind an HTTP address."""

    address = "http://suspect.example/v2/models/m/infer"
    protocol = "v2"


@pytest.fixture(scope="module")
def key(digits: DataSplits) -> KeySet:
    scheme = create_scheme("noise", num_keys=40, num_decoys=60)
    return scheme.generate(digits, seed=0).with_p0(0.05, "test")


@pytest.fixture
def evidence(key: KeySet, tmp_path: Path) -> Path:
    result = verify_ownership(key, Answers(key), request_size=12)
    assert result.verdict is Verdict.OWNED
    path, report = write_evidence(result, key, tmp_path / "ev.json")
    assert report.read_text().startswith("# Ownership verification: OWNED")
    return path


def _edit(path: Path, change: Callable[[dict[str, Any]], None]) -> None:
    doc = json.loads(path.read_text())
    change(doc)
    path.write_text(json.dumps(doc))


def test_untouched_evidence_checks_out(evidence: Path, key: KeySet) -> None:
    check = check_evidence(evidence, key)
    assert check.valid, check.problems
    doc = load_evidence(evidence)
    assert check.verdict == "owned" == doc["result"]["verdict"]
    assert check.p_value == doc["result"]["p_value"]
    assert doc["key"]["commitment"] == key.commitment
    assert doc["suspect"] == {
        "address": Answers.address,
        "protocol": "v2",
        # A query-only test double: the verifier counts its calls; it records no options.
        "transport": {"requests_sent": 1, "images_sent": 12, "retries_done": 0, "errors": 0},
        "options": {},
        "first_seen": None,
    }
    assert doc["control"]["answered"] > 0 and doc["test"]["order"].startswith("fixed by")
    assert any("no trusted date" in note for note in check.notes)
    assert check.attested is None and not check.trusted
    assert {q["role"] for q in doc["queries"]} == {"key", "decoy"}
    assert all(q["sent"] <= q["received"] for q in doc["queries"])
    assert not list(evidence.parent.glob(".*tmp"))


@pytest.mark.parametrize(
    ("what", "change"),
    [
        ("timestamp", lambda d: d.update(started="2020-01-01T00:00:00+00:00")),
        ("address", lambda d: d["suspect"].update(address="http://elsewhere")),
        ("answer", lambda d: d["queries"][0].update(answer=(d["queries"][0]["answer"] + 1) % 10)),
        ("verdict", lambda d: d["result"].update(verdict="not owned")),
        ("p-value", lambda d: d["result"].update(p_value=1e-300)),
        ("alpha", lambda d: d["test"].update(alpha=0.5)),
        ("dropped query", lambda d: d["queries"].pop()),
    ],
)
def test_any_edit_is_detected(
    evidence: Path, key: KeySet, what: str, change: Callable[[dict[str, Any]], None]
) -> None:
    _edit(evidence, change)
    check = check_evidence(evidence, key)
    assert not check.valid
    assert any("digest" in p for p in check.problems), check.problems


def _resealed(path: Path, change: Callable[[dict[str, Any]], None]) -> None:
    """An edit whose author also recomputed the digest: only the content checks can catch it."""
    from ownmark.verify.evidence import _canonical

    def both(doc: dict[str, Any]) -> None:
        change(doc)
        import hashlib

        doc["digest"] = hashlib.sha256(_canonical(doc)).hexdigest()

    _edit(path, both)


def _rescore(doc: dict[str, Any]) -> None:
    """Turn the first key query into a wrong answer that is still counted as a match."""
    first = next(q for q in doc["queries"] if q["role"] == "key")
    first["answer"] = (first["answer"] + 1) % 10  # another label, still marked as a match


def _duplicate(doc: dict[str, Any]) -> None:
    keys = [q for q in doc["queries"] if q["role"] == "key"]
    keys[1]["index"] = keys[0]["index"]
    keys[1]["image_sha256"] = keys[0]["image_sha256"]


def _swap(doc: dict[str, Any]) -> None:
    """Reorder two key queries, as a verifier who shopped for an order would."""
    rows = [i for i, q in enumerate(doc["queries"]) if q["role"] == "key"]
    a, b = rows[0], rows[1]
    doc["queries"][a], doc["queries"][b] = doc["queries"][b], doc["queries"][a]


def _other_decoy(doc: dict[str, Any]) -> None:
    decoy = next(q for q in doc["queries"] if q["role"] == "decoy")
    decoy["index"] = (decoy["index"] + 1) % 60


def _rescore_decoy(doc: dict[str, Any]) -> None:
    decoy = next(q for q in doc["queries"] if q["role"] == "decoy")
    decoy["correct"] = not decoy["correct"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (_rescore, "mis-scored"),
        (_duplicate, "committed order"),
        (_swap, "committed order"),
        (_other_decoy, "not the committed ones"),
        (_rescore_decoy, "mis-scored"),
        (lambda d: d["control"].update(correct=0), "control group"),
        (lambda d: d["result"].update(verdict="not owned"), "recomputed 'owned'"),
        (lambda d: d["test"].update(p0=0.01), "below the key's calibrated bound"),
        (lambda d: d["result"].update(matches=99), "result counts"),
        (lambda d: d["queries"][0].update(image_sha256="0" * 64), "hash"),
    ],
)
def test_consistent_looking_forgeries_fail_the_recomputation(
    evidence: Path, key: KeySet, change: Callable[[dict[str, Any]], None], message: str
) -> None:
    _resealed(evidence, change)
    check = check_evidence(evidence, key)
    assert any(message in p for p in check.problems), check.problems


def test_a_subset_of_the_queries_is_caught(evidence: Path, key: KeySet) -> None:
    """Dropping an unfavourable key query and re-sealing breaks the seeded order."""

    def drop_first_key_query(doc: dict[str, Any]) -> None:
        first = next(i for i, q in enumerate(doc["queries"]) if q["role"] == "key")
        doc["queries"].pop(first)
        doc["result"]["queries"] -= 1
        doc["result"]["matches"] -= 1

    _resealed(evidence, drop_first_key_query)
    problems = check_evidence(evidence, key).problems
    assert any("committed order" in p for p in problems), problems


def test_hostile_error_text_still_writes_evidence(key: KeySet, tmp_path: Path) -> None:
    class Hostile(Answers):
        def query(self, images: torch.Tensor) -> Sequence[object]:
            raise RuntimeError("bad \ud800 bytes | and pipes")

    result = verify_ownership(key, Hostile(key), max_errors=0)
    path, _ = write_evidence(result, key, tmp_path / "h.json")
    assert check_evidence(path, key).valid and result.verdict is Verdict.INCONCLUSIVE
    with pytest.raises(EvidenceError, match=r"\*\.json"):
        write_evidence(result, key, tmp_path / "h.md")


def test_other_key_is_rejected(evidence: Path, digits: DataSplits) -> None:
    other = create_scheme("noise", num_keys=40, num_decoys=60).generate(digits, seed=0)
    check = check_evidence(evidence, other)
    assert not check.valid and "not this key" in check.problems[-1]


def test_signature_binds_the_file_to_the_signer(
    key: KeySet, tmp_path: Path, evidence: Path
) -> None:
    private, public = generate_signing_key(tmp_path / "owner")
    assert private.stat().st_mode & 0o777 == 0o600
    result = verify_ownership(key, Answers(key))
    signed, _ = write_evidence(result, key, tmp_path / "signed.json", signing_key=private)
    check = check_evidence(signed, key, public_key=public)
    assert check.valid and check.signed_by is not None and check.trusted
    # Signed, but with nobody's key pinned: intact, not trusted.
    loose = check_evidence(signed, key)
    assert loose.valid and not loose.trusted
    # Someone else's key pair does not vouch for it.
    _, stranger = generate_signing_key(tmp_path / "stranger")
    assert any(
        "not by the given public key" in p
        for p in check_evidence(signed, key, public_key=stranger).problems
    )
    # An unsigned file fails when a signer is required.
    assert not check_evidence(evidence, key, public_key=public).valid
    # Editing and re-sealing the digest still breaks the signature.
    _resealed(signed, lambda d: d["suspect"].update(address="http://elsewhere"))
    assert any("signature" in p for p in check_evidence(signed, key, public_key=public).problems)
    with pytest.raises(EvidenceError, match="refusing to overwrite"):
        generate_signing_key(tmp_path / "owner")


def test_unreadable_evidence(tmp_path: Path, key: KeySet) -> None:
    with pytest.raises(EvidenceError, match="not found"):
        check_evidence(tmp_path / "missing.json", key)
    (tmp_path / "x.json").write_text("{not json")
    with pytest.raises(EvidenceError, match="not a readable JSON"):
        check_evidence(tmp_path / "x.json", key)
    (tmp_path / "y.json").write_text("[]")
    with pytest.raises(EvidenceError, match="not an ownmark evidence file"):
        check_evidence(tmp_path / "y.json", key)


def test_cli_evidence_check_exit_codes(
    evidence: Path, key: KeySet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key_path = tmp_path / "k.key"
    save_key(key, key_path)
    # Intact but unsigned: its own exit code, never 0.
    assert main(["evidence", "check", str(evidence), "--key", str(key_path)]) == 4
    out = capsys.readouterr().out
    assert "intact: verdict owned" in out and "anyone could have written it" in out
    assert "no trusted date" in out
    private, public = generate_signing_key(tmp_path / "owner")
    doc = json.loads(evidence.read_text())
    from ownmark.verify.evidence import sign_evidence

    evidence.write_text(json.dumps(sign_evidence(doc, private)))
    argv = ["evidence", "check", str(evidence), "--key", str(key_path)]
    assert main([*argv, "--public-key", str(public)]) == 0
    assert "signed by the pinned" in capsys.readouterr().out
    assert main(argv) == 4
    assert "no public key was pinned" in capsys.readouterr().out
    _edit(evidence, lambda d: d["result"].update(verdict="not owned"))
    assert main(["evidence", "check", str(evidence), "--key", str(key_path)]) == 1
    assert "invalid:" in capsys.readouterr().out
    assert main(["evidence", "check", str(tmp_path / "nope.json"), "--key", str(key_path)]) == 2


def _stamped(key: KeySet, tsa: Any) -> KeySet:
    from ownmark.timestamp import encode_token, request_timestamp

    return key.with_timestamp(encode_token(request_timestamp(key.commitment, tsa.url)))


def test_trusted_date_against_the_suspect_first_seen(key: KeySet, tmp_path: Path, tsa: Any) -> None:
    """A key stamped after the suspect appeared could be forged from it (issue 7, verdict 2)."""
    stamped = _stamped(key, tsa)
    result = verify_ownership(stamped, Answers(stamped))
    certs = [Path(tsa.ca_cert_path)]
    early, _ = write_evidence(result, stamped, tmp_path / "early.json", first_seen="2001-01-01")
    check = check_evidence(early, stamped, trusted_tsa_certs=certs)
    assert any("after the suspect model was first seen" in p for p in check.problems)
    later, _ = write_evidence(result, stamped, tmp_path / "later.json", first_seen="2999-01-01")
    check = check_evidence(later, stamped, trusted_tsa_certs=certs)
    assert check.valid and check.attested is not None and check.tsa
    assert not any("no trusted date" in note for note in check.notes)
    # Without a trusted TSA certificate the date is reported, with a warning.
    loose = check_evidence(later, stamped)
    assert any("not checked against a TSA you trust" in note for note in loose.notes)
    # A token for another commitment does not verify.
    foreign = key.with_p0(0.06, "x")
    forged = foreign.with_timestamp(stamped.timestamp_token)
    bad, _ = write_evidence(verify_ownership(forged, Answers(forged)), forged, tmp_path / "b.json")
    assert any("time stamp does not verify" in p for p in check_evidence(bad, forged).problems)
