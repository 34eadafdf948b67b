"""Verification commands: verify (a model file or a remote API) and evidence."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ownmark.cli.common import (
    EXIT_INCONCLUSIVE,
    EXIT_NOT_OWNED,
    EXIT_OK,
    EXIT_UNSIGNED,
    emit,
)
from ownmark.errors import ConfigError

if TYPE_CHECKING:  # the CLI imports torch only for the commands that need it
    from ownmark.verify.suspects import Suspect


def _numbers(text: str | None, flag: str, kind: type[float] | type[int]) -> tuple[Any, ...]:
    """``--flag 1,2,3`` as a tuple of ``kind``, or () when not given; ConfigError otherwise."""
    if text is None:
        return ()
    try:
        return tuple(kind(part) for part in text.split(","))
    except ValueError:
        example = "1,28,28" if kind is int else "0.485,0.456,0.406"
        raise ConfigError(
            f"{flag} takes comma-separated {'whole numbers' if kind is int else 'numbers'} "
            f"such as {example}, got {text!r}"
        ) from None


def wire_format(args: argparse.Namespace, key: Any) -> Any:
    """The :class:`~ownmark.verify.remote.WireFormat` the command line describes.

    Raises:
        ConfigError: a malformed or inconsistent option, or labels that do not name the
            key's classes.
    """
    from ownmark.verify.remote import InputEncoding, WireFormat, read_labels

    shape = _numbers(args.input_shape, "--input-shape", int)
    encoding = InputEncoding(
        datatype=args.input_datatype,
        scale=args.scale,
        mean=_numbers(args.mean, "--mean", float),
        std=_numbers(args.std, "--std", float),
        layout=args.layout,
        shape=shape or None,
    )
    labels = read_labels(args.labels) if args.labels is not None else None
    if labels is not None and len(labels) != key.model_classes:
        raise ConfigError(
            f"{args.labels} names {len(labels)} classes but the key's model has "
            f"{key.model_classes}; give one name per class"
        )
    return WireFormat(
        encoding=encoding,
        output_name=args.output_name,
        answer=args.answer,
        max_batch=args.max_batch,
        labels=labels,
    )


def _suspect(args: argparse.Namespace, key: Any) -> Suspect:
    """The suspect to query: a local model file, or an API through a protocol adapter."""
    if args.model is not None:
        from ownmark.models import load_model
        from ownmark.verify import LocalModelSuspect
        from ownmark.workflows import check_compatible

        model = load_model(args.model, args.allow_factory)
        check_compatible(model, key=key, suspect=True)
        return LocalModelSuspect(model, str(args.model))
    from ownmark.verify.remote import HttpPolicy, open_suspect

    policy = HttpPolicy(
        timeout=args.timeout,
        retries=args.retries,
        deadline=args.deadline,
        total_seconds=args.time_budget,
        max_retry_after=args.max_retry_after,
        max_response_bytes=int(args.max_response_mb * 2**20),
        rate_limit=args.rate_limit,
        token=args.token or os.environ.get("OWNMARK_TOKEN") or None,
    )
    suspect = open_suspect(
        args.url,
        args.protocol,
        model=args.model_name,
        policy=policy,
        template=str(args.template) if args.template is not None else None,
        input_name=args.input_name,
        wire=wire_format(args, key),
        adapter=args.adapter,
    )
    try:
        # One metadata request up front beats spending the budget on images it can't take.
        suspect.check_input(key.image_shape)
    except BaseException:
        suspect.close()
        raise
    return suspect


def _p0_origin(key: Any, override: float | None) -> str:
    import json

    if override is not None:
        return "given with --p0"
    try:
        source = json.loads(key.p0_source)
        return f"calibrated on {len(source['references'])} innocent reference models"
    except (ValueError, KeyError, TypeError):
        return str(key.p0_source)


def _iso_date(text: str) -> str:
    """``text`` as an ISO-8601 date or time (UTC if no zone is given), else ConfigError."""
    from datetime import datetime, timezone

    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise ConfigError(
            f"--first-seen takes an ISO date such as 2025-01-31, got {text!r}"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return when.isoformat()


def _evidence_path(args: argparse.Namespace) -> Path:
    """--evidence, or a fresh name under ownmark-evidence/ that no other run can take."""
    import secrets
    from datetime import datetime, timezone

    if args.evidence is not None:
        path: Path = args.evidence
        if path.suffix == ".md":
            raise ConfigError(f"name the evidence file *.json, not {path.name}")
        return path
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
    return Path("ownmark-evidence") / f"verify-{stamp}-{secrets.token_hex(3)}.json"


def cmd_verify(args: argparse.Namespace) -> int:
    from ownmark.fileio import write_json_atomic
    from ownmark.keys import load_key
    from ownmark.verify import Verdict, VerifyConfig, verify_ownership
    from ownmark.verify.evidence import load_signing_key, write_evidence
    from ownmark.verify.verifier import plan_test

    if args.fixed and args.dismiss_below is not None:
        raise ConfigError("--fixed spends the whole budget; drop --dismiss-below or --fixed")
    key = load_key(args.key)
    config = VerifyConfig(
        alpha=args.alpha,
        p0=args.p0,
        max_queries=args.max_queries,
        sequential=not args.fixed,
        request_size=args.batch,
        decoy_ratio=args.decoys,
        control_level=args.control_level,
        max_errors=args.max_errors,
        min_watermark_rate=args.dismiss_below,
    )
    first_seen = _iso_date(args.first_seen) if args.first_seen else None
    # A local model file is checked first (a wrong file is the likelier mistake); a remote
    # suspect is contacted only after everything that can fail on our side has passed.
    suspect = _suspect(args, key) if args.model is not None else None
    test = plan_test(key, config)  # planned once: the verifier runs this very test
    if args.sign_key is not None:
        load_signing_key(args.sign_key)
    evidence_path = _evidence_path(args)
    if suspect is None:
        suspect = _suspect(args, key)
    try:
        result = verify_ownership(key, suspect, config, test=test, check_input=False)
    finally:
        suspect.close()
    # Written before anything is printed: a failed write must not look like a verdict.
    json_path, report_path = write_evidence(
        result, key, evidence_path, signing_key=args.sign_key, first_seen=first_seen
    )
    if args.json is not None:
        write_json_atomic(args.json, result.summary())
    print(f"suspect {result.suspect} ({result.protocol})")
    sent = result.transport.get("requests_sent")
    remote = result.protocol in ("v2", "torchserve", "template")
    http = f" ({sent} HTTP requests incl. retries and metadata)" if remote else ""
    print(
        f"key queries {result.queries} of budget {result.budget}: {result.matches} matched, "
        f"{result.errors} failed; {result.decoys} decoys; {result.requests} requests{http}; "
        f"stopped: {result.stop_reason}"
    )
    failures = sorted({r.error for r in result.records if r.error is not None})
    for failure in failures[:3]:
        print(f"failed query: {failure}")
    print(
        f"p-value {result.p_value:.3e} (adjusted {result.adjusted_p_value:.3e}), alpha "
        f"{result.alpha:g}, p0 {result.p0:.4g} ({_p0_origin(key, args.p0)})"
    )
    from ownmark.calibrate import guarantee

    print(f"guarantee: {guarantee(key.p0_source, result.alpha)}")
    control = result.control
    if control is None:
        print("control group: none (--decoys 0)")
    else:
        print(
            f"control group: {control.correct}/{control.answered} decoys classified right "
            f"(p {control.accuracy_p:.1e} vs chance), key label on {control.key_label_hits} "
            f"(separation p {control.separation_p:.1e}): "
            + ("passed" if control.passed else "FAILED")
        )
    identity = result.identity
    if identity is not None:
        print(
            f"identity (second leg): {identity['measure'].upper()} {identity['mean']:.3f} of "
            f"the revealed copyright image vs threshold {identity['threshold']:.3f}, "
            f"{100 * identity['share_above']:.0f}% of the triggers above: "
            + ("passed" if identity["passed"] else "FAILED")
        )
    print(f"verdict: {result.verdict.value}")
    print(f"evidence {json_path} (report {report_path})")
    files = {"evidence": json_path, "report": report_path}
    emit(
        args,
        result.summary()
        | {
            "p0_origin": _p0_origin(key, args.p0),
            "guarantee": guarantee(key.p0_source, result.alpha),
            "failures": failures,
            "identity": identity,
            "evidence": json_path,
            "files": files | ({"json": args.json} if args.json is not None else {}),
        },
    )
    return {
        Verdict.OWNED: EXIT_OK,
        Verdict.NOT_OWNED: EXIT_NOT_OWNED,
        Verdict.INCONCLUSIVE: EXIT_INCONCLUSIVE,
    }[result.verdict]


def cmd_evidence(args: argparse.Namespace) -> int:
    from ownmark.keys import load_key
    from ownmark.verify.evidence import check_evidence, generate_signing_key

    if args.evidence_command == "keypair":
        private, public = generate_signing_key(args.out)
        print(f"wrote {private} (private, keep it secret) and {public} (public)")
        emit(args, {"files": {"private": private, "public": public}})
        return EXIT_OK
    check = check_evidence(
        args.evidence,
        load_key(args.key),
        public_key=args.public_key,
        trusted_tsa_certs=[args.tsa_cert] if args.tsa_cert else None,
    )
    emit(
        args,
        {
            "evidence": args.evidence,
            "valid": check.valid,
            "verdict": check.verdict,
            "p_value": check.p_value,
            "problems": check.problems,
            "notes": check.notes,
            "trusted": check.trusted,
            "signed_by": check.signed_by,
            "attested": check.attested,
            "tsa": check.tsa,
        },
    )
    if not check.valid:
        for problem in check.problems:
            print(f"invalid: {problem}")
        return EXIT_NOT_OWNED
    print(f"intact: verdict {check.verdict}, p-value {check.p_value:.3e}")
    if check.attested:
        print(f"key time-stamped {check.attested} by {check.tsa}")
    for note in check.notes:
        print(f"note: {note}")
    if check.trusted:
        print(f"signed by the pinned Ed25519 key {check.signed_by}")
        return EXIT_OK
    if check.signed_by:
        print(
            f"signed by Ed25519 key {check.signed_by}, but no public key was pinned: pass "
            "--public-key to say whose signature you accept"
        )
    else:
        print("intact but unsigned: anyone could have written it")
    return EXIT_UNSIGNED


def cmd_trace(args: argparse.Namespace) -> int:
    """``ownmark trace``: verify one suspect with every licensee's key, Holm-corrected."""
    from ownmark.keys import load_key
    from ownmark.trace import trace_licensees
    from ownmark.verify import VerifyConfig

    if not args.keys.is_dir():
        raise ConfigError(f"--keys {args.keys} is not a folder; give the folder of key files")
    files = sorted(args.keys.glob("*.safetensors"))
    if len(files) < 2:
        raise ConfigError(
            f"{args.keys} holds {len(files)} key file(s); tracing needs one per licensee, "
            "at least 2"
        )
    keys = {file.stem: load_key(file) for file in files}
    first = next(iter(keys.values()))
    shapes = {key.image_shape for key in keys.values()}
    if len(shapes) > 1:
        raise ConfigError(f"the keys are for images of different shapes {sorted(shapes)}")
    suspect = _suspect(args, first)
    try:
        result = trace_licensees(keys, suspect, VerifyConfig(alpha=args.alpha))
    finally:
        suspect.close()
    print(f"suspect {args.url or args.model}: {len(keys)} licensee keys")
    for test in result.tests:
        print(
            f"  {test.licensee:16s} {test.verdict:12s} {test.matches}/{test.queries} matched "
            f"({test.errors} failed), p {test.p_value:.2e}, Holm-adjusted {test.holm_p_value:.2e}"
        )
    named = ", ".join(result.licensees)
    print(
        {
            "licensee": f"attribution: licensee {named}",
            "ambiguous": f"attribution: ambiguous between {named} (several copies answer)",
            "none": "attribution: none (no licensee's key verifies)",
            "inconclusive": "attribution: inconclusive (queries failed; nothing attributed)",
        }[result.attribution]
    )
    emit(args, result.summary())
    return {"licensee": EXIT_OK, "ambiguous": EXIT_OK, "none": EXIT_NOT_OWNED}.get(
        result.attribution, EXIT_INCONCLUSIVE
    )
