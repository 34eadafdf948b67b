"""Evidence files: a verification written down so that anyone holding the key can re-check it.

An evidence file (JSON) holds the key's commitment and creation time, the suspect's address
and protocol, every query (key sample or decoy, image SHA-256, answer, time stamps), the test
(p0, alpha, budget, look rule), the result (matches, queries, p-value, verdict) and ownmark's
version. A SHA-256 ``digest`` over the canonical JSON catches edits; an optional Ed25519
``signature`` (the ``cryptography`` package, ``pip install ownmark[sign]``) makes the file
impossible to alter after the fact without the signer's private key.

:func:`check_evidence` recomputes everything that can be recomputed from the file and the key:
the digest and signature, that the key is the committed one, that the bytes of every
request body are what the key's images and the recorded suspect options give (format 3),
that every request holds exactly the key samples and decoys the key's commitment puts
there (so no query was left out or reordered), that every image hash is that image's, that
each answer was scored right, the control group's tests, and the verdict and p-value from
the counts. It also verifies the key's RFC 3161 time stamp, if it has one, and compares the
attested date with the date the suspect model was first seen (``first_seen``): a key stamped
after the suspect existed could have been forged from it. What it cannot re-check is what the
suspect really answered: the file records the answers, the signature vouches for who wrote
them, and the time stamps for when.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from ownmark import __version__
from ownmark.calibrate import guarantee
from ownmark.errors import EvidenceError
from ownmark.fileio import atomic_path, write_text_atomic
from ownmark.keys import KeySet
from ownmark.schemes import answer_matcher, key_identity
from ownmark.verify.verifier import (
    ControlResult,
    QueryRecord,
    RequestLayout,
    VerificationResult,
    VerifyConfig,
    control_test,
    decide,
    image_sha256,
    implausibly_few,
    plan_test,
    score_answer,
)

EVIDENCE_FORMAT = "ownmark-evidence"
#: 3 adds the suspect's options (``suspect.options``) and the digest of every request body
#: (``wire``); files of format 2 are still read and checked, without the bytes.
EVIDENCE_FORMAT_VERSION = "3"
READABLE_FORMAT_VERSIONS = ("2", "3")


def _canonical(doc: dict[str, Any]) -> bytes:
    """The bytes the digest and the signature cover: everything but those two fields."""
    body = {k: v for k, v in doc.items() if k not in ("digest", "signature")}
    # ASCII escapes: a hostile server's error text (lone surrogates, ...) still serialises.
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def build_evidence(
    result: VerificationResult, key: KeySet, *, first_seen: str | None = None
) -> dict[str, Any]:
    """The evidence document for ``result`` (obtained with ``key``), with its digest.

    ``first_seen``: ISO date the suspect model was first seen or released (it bounds when
    a forger could have made a key from it); recorded for :func:`check_evidence`.
    """
    doc: dict[str, Any] = {
        "format": EVIDENCE_FORMAT,
        "format_version": EVIDENCE_FORMAT_VERSION,
        "ownmark_version": __version__,
        "written": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "key": {
            "commitment": key.commitment,
            "created": key.created,
            "scheme": key.scheme,
            "dataset": key.dataset,
            "samples": len(key),
            "num_classes": key.num_classes,
            "p0": key.p0,
            "p0_source": key.p0_source,
            "seed_source": key.seed_source,
            "plan": {"alpha": key.alpha, "max_queries": key.max_queries},
            "released_model_sha256": key.released_model_sha256,
            "decoys": len(key.decoys),
            "timestamp_token": key.timestamp_token,
        },
        "suspect": {
            "address": result.suspect,
            "protocol": result.protocol,
            "transport": result.transport,
            "options": result.options,
            "first_seen": first_seen,
        },
        "test": {
            "method": result.method,
            "p0": result.p0,
            "alpha": result.alpha,
            "budget": result.budget,
            "sequential": result.config.sequential,
            "order": "fixed by the key commitment",
            "config": asdict(result.config),
        },
        "control": None if result.control is None else asdict(result.control),
        "started": result.started,
        "finished": result.finished,
        "queries": [asdict(record) for record in result.records],
        "wire": result.wire,
        "result": {
            "verdict": result.verdict.value,
            "p_value": result.p_value,
            "adjusted_p_value": result.adjusted_p_value,
            "matches": result.matches,
            "queries": result.queries,
            "errors": result.errors,
            "decoys": result.decoys,
            "requests": result.requests,
            "stop_reason": result.stop_reason,
        },
    }
    # A scheme's second leg (UDH: the copyright image revealed from the key's triggers),
    # recomputed from the key by check_evidence; absent for schemes without one.
    if result.identity is not None:
        doc["identity"] = result.identity
    doc["digest"] = hashlib.sha256(_canonical(doc)).hexdigest()
    return doc


def render_report(doc: dict[str, Any]) -> str:
    """A short human-readable (Markdown) report of an evidence document."""
    res, test, key = doc["result"], doc["test"], doc["key"]
    lines = [
        f"# Ownership verification: {res['verdict'].upper()}",
        "",
        f"- suspect: {doc['suspect']['address']} ({doc['suspect']['protocol']})",
        _options_line(doc["suspect"].get("options")),
        f"- key: commitment `{key['commitment']}`, created {key['created']}, "
        f"{key['scheme']} scheme, {key['samples']} samples",
        f"- key matches: {res['matches']} of {res['queries']} key queries "
        f"({res['errors']} failed), {res['decoys']} decoys, {res['requests']} requests; "
        f"stopped: {res['stop_reason']}",
        f"- p-value {res['p_value']:.3e} (adjusted for looks: {res['adjusted_p_value']:.3e}) "
        f"against alpha {test['alpha']:g}, p0 {test['p0']:.4g}",
        f"- guarantee: {guarantee(key['p0_source'], test['alpha'])}",
        _control_line(doc.get("control")),
        *_identity_lines(doc.get("identity")),
        "- trusted date of the key: "
        + ("RFC 3161 token attached" if key.get("timestamp_token") else "none (no time stamp)"),
        f"- test: {test['method']}",
        f"- time: {doc['started']} to {doc['finished']}; ownmark {doc['ownmark_version']}",
        f"- evidence digest: `{doc['digest']}`"
        + (
            f"; signed by Ed25519 key `{doc['signature']['public_key']}`"
            if "signature" in doc
            else ""
        ),
        "",
        "| request | role | row (key or decoy) | image SHA-256 | answer | match | error |",
        "| ---: | --- | ---: | --- | --- | --- | --- |",
    ]
    for q in doc["queries"]:
        index = "" if q["index"] is None else q["index"]
        error = (q["error"] or "").replace("|", "/")
        answer = str(q["answer"]).replace("|", "/")
        lines.append(
            f"| {q['request']} | {q['role']} | {index} | `{q['image_sha256'][:16]}…` | "
            f"{answer} | {'yes' if q['matched'] else 'no'} | {error} |"
        )
    lines.append("")
    lines.append(
        "Re-check with `ownmark evidence check EVIDENCE.json --key KEY` (needs the key file)."
    )
    return "\n".join(lines) + "\n"


def _identity_lines(identity: dict[str, Any] | None) -> list[str]:
    """The identity leg's line, when the key's scheme has one."""
    if identity is None:
        return []
    return [
        f"- identity (second leg): {'PASSED' if identity['passed'] else 'FAILED'}; the "
        f"copyright image revealed from the key's triggers scores {identity['measure'].upper()} "
        f"{identity['mean']:.3f} on average (min {identity['min']:.3f}) against a threshold of "
        f"{identity['threshold']:.3f} calibrated on clean covers; "
        f"{100 * identity['share_above']:.0f}% of the triggers above it "
        f"({100 * identity['required_share']:.0f}% required)"
    ]


def _options_line(options: dict[str, Any] | None) -> str:
    """The suspect's request options in one line (labels counted, not listed)."""
    if not options:
        return "- request options: none recorded"
    shown = dict(options)
    if isinstance(shown.get("labels"), list):
        shown["labels"] = f"{len(shown['labels'])} names"
    text = json.dumps(shown, sort_keys=True, ensure_ascii=True).replace("|", "/")
    return f"- request options: `{text}`"


def _control_line(control: dict[str, Any] | None) -> str:
    if control is None:
        return "- control group: none (no decoys were sent)"
    c = ControlResult(**control)
    return (
        f"- control group: {c.answered} decoys answered, {c.correct} correctly (p "
        f"{c.accuracy_p:.2e} against chance), {c.key_label_hits} with the key label "
        f"(separation p {c.separation_p:.2e}); level {c.level:g}: "
        + ("passed" if c.passed else "FAILED")
    )


def _require_cryptography() -> None:
    try:
        import cryptography  # noqa: F401
    except ImportError as exc:
        raise EvidenceError(
            "signatures need the cryptography package: pip install 'ownmark[sign]'"
        ) from exc


def load_signing_key(path: str | os.PathLike[str]) -> Any:
    """The Ed25519 private key in ``path`` (PEM); load it before querying, so a bad key
    cannot cost a whole verification."""
    _require_cryptography()
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    try:
        private = load_pem_private_key(Path(path).read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise EvidenceError(
            f"cannot read an unencrypted PEM private key from {path} ({exc})"
        ) from exc
    if not isinstance(private, Ed25519PrivateKey):
        raise EvidenceError(
            f"{path} is not an Ed25519 key; make one with 'ownmark evidence keypair'"
        )
    return private


def _raw_public(public: Any) -> str:
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    return str(public.public_bytes(Encoding.Raw, PublicFormat.Raw).hex())


def sign_evidence(doc: dict[str, Any], private_key: str | os.PathLike[str]) -> dict[str, Any]:
    """Add an Ed25519 signature over the canonical document (digest recomputed first)."""
    private = load_signing_key(private_key)
    doc = {**doc, "digest": hashlib.sha256(_canonical(doc)).hexdigest()}
    doc["signature"] = {
        "algorithm": "Ed25519",
        "public_key": _raw_public(private.public_key()),
        "value": private.sign(_canonical(doc)).hex(),
    }
    return doc


def generate_signing_key(out: str | os.PathLike[str]) -> tuple[Path, Path]:
    """Write a new Ed25519 key pair: ``OUT`` (private, PEM, mode 0600) and ``OUT.pub``."""
    _require_cryptography()
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import (
        Encoding,
        NoEncryption,
        PrivateFormat,
        PublicFormat,
    )

    private_path = Path(out)
    public_path = private_path.with_name(private_path.name + ".pub")
    for path in (private_path, public_path):
        if path.exists():
            raise EvidenceError(f"{path} exists; refusing to overwrite a signing key")
    private = Ed25519PrivateKey.generate()
    pem = private.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
    private_path.parent.mkdir(parents=True, exist_ok=True)
    # mkstemp creates the file 0600, so the secret is never readable by others, even briefly.
    fd, tmp = tempfile.mkstemp(prefix=f".{private_path.name}.", dir=private_path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(pem)
        os.replace(tmp, private_path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    public = private.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    with atomic_path(public_path) as tmp_public:
        tmp_public.write_bytes(public)
    return private_path, public_path


def write_evidence(
    result: VerificationResult,
    key: KeySet,
    path: str | os.PathLike[str],
    *,
    signing_key: str | os.PathLike[str] | None = None,
    first_seen: str | None = None,
) -> tuple[Path, Path]:
    """Write the evidence JSON to ``path`` and its report next to it (``.md``), atomically.

    Returns the two paths. With ``signing_key`` (an Ed25519 PEM private key) the JSON is
    signed; ``first_seen`` as in :func:`build_evidence`.
    """
    json_path = Path(path)
    report_path = json_path.with_suffix(".md")
    if report_path == json_path:
        raise EvidenceError(f"name the evidence file *.json, not {json_path.name}")
    doc = build_evidence(result, key, first_seen=first_seen)
    if signing_key is not None:
        doc = sign_evidence(doc, signing_key)
    text = json.dumps(doc, indent=1, sort_keys=True, allow_nan=False, ensure_ascii=True)
    write_text_atomic(json_path, text + "\n")
    # A server's error text may hold lone surrogates that UTF-8 cannot store: escape them.
    report = render_report(doc).encode("utf-8", "backslashreplace").decode("utf-8")
    write_text_atomic(report_path, report)
    return json_path, report_path


def load_evidence(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read an evidence JSON file (no checks beyond being a JSON object of the right format)."""
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise EvidenceError(f"evidence file not found: {path}") from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise EvidenceError(f"{path} is not a readable JSON evidence file ({exc})") from exc
    if not isinstance(doc, dict) or doc.get("format") != EVIDENCE_FORMAT:
        raise EvidenceError(f"{path} is not an ownmark evidence file (no '{EVIDENCE_FORMAT}' tag)")
    version = doc.get("format_version")
    if version not in READABLE_FORMAT_VERSIONS:
        raise EvidenceError(
            f"{path} has evidence format {version!r}; this ownmark reads formats "
            f"{', '.join(READABLE_FORMAT_VERSIONS)} (upgrade ownmark to read newer files)"
        )
    return doc


@dataclass
class EvidenceCheck:
    """Outcome of :func:`check_evidence`.

    ``valid``: intact and consistent (no ``problems``). ``trusted``: valid **and** signed by
    the pinned public key; an unsigned file is intact but anyone could have written it.
    ``attested``: the key's time-stamped date (None: no trusted date). ``notes``: what the
    file does not prove (no trusted date, settings chosen at verification, ...).
    """

    verdict: str | None = None
    p_value: float | None = None
    signed_by: str | None = None
    pinned: bool = False
    attested: str | None = None
    tsa: str | None = None
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def valid(self) -> bool:
        return not self.problems

    @property
    def trusted(self) -> bool:
        return self.valid and self.pinned


def _public_key_hex(path: str | os.PathLike[str]) -> str:
    _require_cryptography()
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    try:
        public = load_pem_public_key(Path(path).read_bytes())
    except (OSError, ValueError) as exc:
        raise EvidenceError(f"cannot read a PEM public key from {path} ({exc})") from exc
    if not isinstance(public, Ed25519PublicKey):
        raise EvidenceError(f"{path} is not an Ed25519 public key")
    return _raw_public(public)


def _check_signature(doc: dict[str, Any], check: EvidenceCheck, pinned: str | None) -> None:
    signature = doc.get("signature")
    if signature is None:
        if pinned is not None:
            check.problems.append("the evidence is not signed, but a signer's public key was given")
        return
    _require_cryptography()
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        public = Ed25519PublicKey.from_public_bytes(bytes.fromhex(signature["public_key"]))
        public.verify(bytes.fromhex(signature["value"]), _canonical(doc))
    except (InvalidSignature, KeyError, TypeError, ValueError):
        check.problems.append("the Ed25519 signature does not match the content (edited or forged)")
        return
    check.signed_by = str(signature["public_key"])
    if pinned is not None and pinned != check.signed_by:
        check.problems.append(
            f"signed by key {check.signed_by[:16]}…, not by the given public key {pinned[:16]}…"
        )
    check.pinned = pinned is not None and pinned == check.signed_by


def check_evidence(
    path: str | os.PathLike[str],
    key: KeySet,
    *,
    public_key: str | os.PathLike[str] | None = None,
    trusted_tsa_certs: list[Path] | None = None,
) -> EvidenceCheck:
    """Re-check an evidence file against the key; every inconsistency becomes a problem line.

    Args:
        path: the evidence JSON.
        key: the key file the verification used.
        public_key: an Ed25519 public key (PEM) the evidence must be signed with.
        trusted_tsa_certs: certificates the key's time stamp must chain to (default: the
            token's own signer certificate is checked, not who issued it).
    """
    doc = load_evidence(path)
    check = EvidenceCheck()
    if doc.get("digest") != hashlib.sha256(_canonical(doc)).hexdigest():
        check.problems.append("the file was edited after it was written (digest mismatch)")
    _check_signature(doc, check, _public_key_hex(public_key) if public_key else None)
    try:
        _check_content(doc, key, check)
        _check_wire(doc, key, check)
        _check_dates(doc, key, check, trusted_tsa_certs)
    except (KeyError, TypeError, ValueError, IndexError, OverflowError) as exc:
        check.problems.append(f"the evidence is malformed ({type(exc).__name__}: {exc})")
    return check


def date_problem(attested: datetime, first_seen: datetime) -> str | None:
    """The date rule: a key whose trusted date is after the suspect model was first seen
    could have been made from that model (None: the rule does not object). Naive datetimes
    are taken as UTC."""
    if attested.tzinfo is None:
        attested = attested.replace(tzinfo=timezone.utc)
    if first_seen.tzinfo is None:
        first_seen = first_seen.replace(tzinfo=timezone.utc)
    if attested > first_seen:
        return (
            f"the key was time-stamped {attested.isoformat(timespec='seconds')}, after the "
            f"suspect model was first seen ({first_seen.isoformat(timespec='seconds')}): it "
            "could have been made from that model"
        )
    return None


def _check_dates(
    doc: dict[str, Any], key: KeySet, check: EvidenceCheck, certs: list[Path] | None
) -> None:
    """The key's trusted date (RFC 3161) against the date the suspect was first seen."""
    token = key.timestamp_token or doc["key"].get("timestamp_token") or ""
    first_seen = doc["suspect"].get("first_seen")
    if not token:
        check.notes.append(
            "no trusted date: the key's 'created' field is self-declared, so the key could "
            "have been made after the suspect model appeared (e.g. forged from its "
            "adversarial examples); time-stamp keys with 'ownmark key timestamp'"
        )
        return
    from ownmark.timestamp import TimestampError, decode_token, verify_timestamp

    try:
        info = verify_timestamp(decode_token(token), key.commitment, trusted_certs=certs)
    except TimestampError as exc:
        check.problems.append(f"the key's time stamp does not verify: {exc}")
        return
    check.attested, check.tsa = info.time.isoformat(timespec="seconds"), info.tsa
    if not certs:
        check.notes.append(
            f"the time stamp is signed by '{info.tsa}', but that certificate was not checked "
            "against a TSA you trust (pass --tsa-cert): anyone can make such a certificate"
        )
    if first_seen:
        problem = date_problem(info.time, datetime.fromisoformat(str(first_seen)))
        if problem:
            check.problems.append(problem)
    else:
        check.notes.append(
            "the suspect's first-seen date is not recorded (verify --first-seen DATE), so the "
            "key's trusted date was not compared with it"
        )


def _check_content(doc: dict[str, Any], key: KeySet, check: EvidenceCheck) -> None:
    if doc["key"]["commitment"] != key.commitment:
        check.problems.append(
            f"the evidence is for key {doc['key']['commitment'][:16]}…, "
            f"not this key ({key.commitment[:16]}…)"
        )
        return
    test, res = doc["test"], doc["result"]
    config = VerifyConfig(**test["config"])
    p0, budget = float(test["p0"]), int(test["budget"])
    planned = plan_test(key, config)
    if p0 < key.p0:
        check.problems.append(f"p0 {p0:g} is below the key's calibrated bound {key.p0:g}")
    recorded = (p0, float(test["alpha"]), budget, bool(test["sequential"]))
    if recorded != (planned.p0, planned.alpha, planned.max_queries, planned.sequential):
        check.problems.append(
            f"the test (p0, alpha, budget, sequential) {recorded} is not what its recorded "
            "config gives"
        )
    if config.unsafe_no_control:
        check.notes.append(
            "verified without a control group on request (unsafe_no_control): an API that "
            "gives every image the key's one label would also be 'owned'"
        )
    if key.p0_source == "assumed" and config.p0 is None:
        check.notes.append(
            f"p0 {key.p0:g} is assumed, not calibrated on innocent models: a key whose images "
            "many models answer alike (e.g. adversarial examples, which transfer) can match "
            "innocent models more often than that"
        )
    if (planned.alpha, planned.max_queries) != (key.alpha, min(key.max_queries, len(key))):
        check.notes.append(
            f"alpha {planned.alpha:g} and budget {planned.max_queries} were chosen at "
            f"verification, not the key's plan ({key.alpha:g}, {key.max_queries}): each "
            "setting tried adds up to its alpha to the false-claim rate"
        )
    records = [QueryRecord(**q) for q in doc["queries"]]
    _check_layout(records, key, config, planned.max_queries, check)
    matches = errors = queries = decoys = 0
    answer_matches = answer_matcher(key)
    for r in records:
        images = key.images if r.role == "key" else key.decoys
        if not 0 <= r.index < len(images):
            check.problems.append(f"{r.role} {r.index}: no such image in the key")
            continue
        if r.image_sha256 != image_sha256(images[r.index]):
            check.problems.append(f"{r.role} {r.index}: image hash differs from the key's image")
        key_label = int((key.labels if r.role == "key" else key.decoy_key_labels)[r.index])
        if r.error is None:
            _, label, error = score_answer(r.answer, key.model_classes)
            correct = None if r.role == "key" else label == int(key.decoy_labels[r.index])
            matched = answer_matches(label, key_label)
            if error is not None or matched != r.matched or correct != r.correct:
                check.problems.append(f"{r.role} {r.index}: answer {r.answer!r} mis-scored")
        elif r.matched or r.correct:
            check.problems.append(f"{r.role} {r.index}: a failed query was counted as answered")
        if r.role == "decoy":
            decoys += 1
            continue
        queries += 1
        matches += bool(r.matched)
        errors += r.error is not None
    counted = (res["matches"], res["queries"], res["errors"], res["decoys"])
    if counted != (matches, queries, errors, decoys):
        check.problems.append(
            f"result counts (matches, queries, errors, decoys) {counted} differ from the "
            f"recorded queries {(matches, queries, errors, decoys)}"
        )
    if queries > budget:
        check.problems.append(f"{queries} key queries exceed the budget {budget}")
    control = (
        control_test(records, key.num_classes, config.control_level)
        if config.decoy_ratio > 0
        else None
    )
    if (None if control is None else asdict(control)) != doc.get("control"):
        check.problems.append("the recorded control group tests differ from the recomputed ones")
    # Decide with the test the recorded config implies (a mismatch is reported above).
    dismissed = res["stop_reason"] == "dismissed"
    if dismissed and not implausibly_few(matches + errors, queries, config.min_watermark_rate):
        check.problems.append("stop reason 'dismissed' is not supported by the recorded answers")
    verdict, p_value = decide(planned, matches, queries, errors, res["stop_reason"], control)
    check.verdict, check.p_value = verdict.value, p_value
    if verdict.value != res["verdict"]:
        check.problems.append(f"recorded verdict {res['verdict']!r}, recomputed {verdict.value!r}")
    if not _close(p_value, float(res["p_value"])):
        check.problems.append(f"recorded p-value {res['p_value']}, recomputed {p_value}")
    identity = key_identity(key)
    if not _same_identity(identity, doc.get("identity")):
        check.problems.append(
            f"the recorded identity leg {doc.get('identity')!r} differs from the one the key "
            f"gives {identity!r}"
        )
    elif identity is not None and not identity["passed"]:
        check.notes.append("the identity leg failed: the key's triggers do not reveal its image")


def _check_layout(
    records: list[QueryRecord],
    key: KeySet,
    config: VerifyConfig,
    budget: int,
    check: EvidenceCheck,
) -> None:
    """Every request must hold what the key's commitment puts in it, in that order.

    The key samples are a prefix of the committed order, and each request's decoys are the
    committed ones at the committed places: leaving out an unfavourable query, reordering,
    or re-running with a chosen seed all break it.
    """
    layout = RequestLayout(key, config)
    order = layout.order[:budget]
    requests: dict[int, list[QueryRecord]] = {}
    for r in records:
        requests.setdefault(r.request, []).append(r)
    if sorted(requests) != list(range(len(requests))):
        check.problems.append("the requests are not numbered 0, 1, 2, ... (requests left out?)")
        return
    sent = cursor = 0
    for number in range(len(requests)):
        items = [(r.role, r.index) for r in requests[number]]
        rows = [index for role, index in items if role == "key"]
        if rows != order[sent : sent + len(rows)]:
            check.problems.append(
                f"request {number}: the key queries are not the committed order "
                "(queries left out or reordered?)"
            )
            return
        if items != layout.items(rows, number, cursor):
            check.problems.append(f"request {number}: the decoys are not the committed ones")
            return
        sent += len(rows)
        cursor += len(items) - len(rows)


def _check_wire(doc: dict[str, Any], key: KeySet, check: EvidenceCheck) -> None:
    """Rebuild every request body from the key's images and the recorded options and compare
    its SHA-256 with the recorded one: the options in the file are the ones the bytes were
    made with, and the images sent are the key's, in the recorded order."""
    if doc["format_version"] == "2":
        check.notes.append(
            "evidence format 2 records no request bodies; the bytes sent were not re-derived"
        )
        return
    from ownmark.verify.remote import request_bodies

    suspect = doc["suspect"]
    protocol, options = str(suspect["protocol"]), suspect["options"]
    if protocol == "local":
        return  # a model in the verifier's process: nothing went over a wire
    if not options:
        check.notes.append(
            f"the {protocol} suspect recorded no options (a suspect object of the caller's "
            "own), so the bytes sent were not re-derived"
        )
        return
    requests: dict[int, list[QueryRecord]] = {}
    for q in doc["queries"]:
        record = QueryRecord(**q)
        requests.setdefault(record.request, []).append(record)
    wire = doc["wire"]
    if [int(w["request"]) for w in wire] != sorted(requests):
        check.problems.append("the recorded request bodies do not match the requests")
        return
    for entry in wire:
        number, bodies = int(entry["request"]), list(entry["bodies"])
        records = requests[number]
        images = [
            (key.images if r.role == "key" else key.decoys)[r.index]
            for r in records
            if 0 <= r.index < len(key.images if r.role == "key" else key.decoys)
        ]
        if len(images) != len(records):
            return  # an index outside the key, reported by the content check
        batch = torch.stack(images).numpy()
        expected = request_bodies(protocol, options, batch, [b.get("id") for b in bodies])
        if expected is None:
            continue
        failed = any(r.error is not None for r in records)
        # A request that failed part-way sent only its first bodies.
        complete = len(bodies) == len(expected) or (failed and len(bodies) < len(expected))
        digests = [hashlib.sha256(body).hexdigest() for body in expected[: len(bodies)]]
        if not complete or digests != [b["sha256"] for b in bodies]:
            check.problems.append(
                f"request {number}: the bytes sent are not what the key's images and the "
                f"recorded {protocol} options give"
            )
            return
    if protocol not in ("v2", "template", "torchserve"):
        check.notes.append(
            f"the {protocol} suspect's request bytes are not ownmark's to re-derive (a local "
            "model or a Python adapter); only its options are recorded"
        )


def _same_identity(a: dict[str, Any] | None, b: dict[str, Any] | None) -> bool:
    """Two records of the identity leg agree: the same fields and outcome, the numbers to
    1e-4 (they come from a network run on this machine and the one that wrote the file, and
    are recorded to 6 decimals)."""
    if a is None or b is None:
        return a is b
    if a.keys() != b.keys():
        return False
    for name, value in a.items():
        other = b[name]
        if isinstance(value, float) and isinstance(other, int | float):
            if abs(value - other) > 1e-4:
                return False
        elif value != other:
            return False
    return True


def _close(a: float, b: float) -> bool:
    return abs(a - b) <= 1e-9 * max(abs(a), abs(b)) or a == b
