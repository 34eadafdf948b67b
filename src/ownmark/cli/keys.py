"""Key commands: keygen, calibrate, key (time stamp, show), preview."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

from ownmark.cli.common import EXIT_OK, _load_data, _parse_params, emit, log
from ownmark.errors import ConfigError


def _calibrate(args: argparse.Namespace, key: Any, test: Any = None) -> tuple[Any, Any]:
    """Calibrate ``key`` on the --reference models; each one's group comes from its file.

    A reference whose file records another key's commitment (``ownmark embed`` writes it)
    is an "other-key" model; one recording this key is refused (it is not innocent).
    """
    from ownmark.calibrate import calibrate_key
    from ownmark.models import load_model, read_model_metadata

    groups = []
    for path in args.reference:
        committed = read_model_metadata(path).get("key_commitment")
        if committed is not None and committed == key.commitment:
            raise ConfigError(f"reference {path} carries this very key; it is not innocent")
        groups.append("other-key" if committed else "clean")
    references = [load_model(path, args.allow_factory) for path in args.reference]
    return calibrate_key(
        key,
        references,
        names=[path.stem for path in args.reference],
        groups=groups,
        confidence=args.confidence,
        test=test,
        min_reference_accuracy=args.min_reference_accuracy,
        allow_weak=True,  # _check_plan refuses it, naming --allow-weak-key
    )


def _print_calibration(report: Any) -> None:
    """Each reference's accuracy and false matches, each group's rate, p0 and its caveat."""
    for r in report.references:
        acc = "-" if r.test_accuracy is None else f"{100 * r.test_accuracy:.1f}%"
        print(
            f"  reference {r.name} ({r.arch}, {r.group}): test accuracy {acc}, key label on "
            f"{r.matches_on_key} key samples, {r.loo_matches}/{r.loo_trials} leave-one-out "
            f"-> bound {r.upper_bound:.4g}"
        )
    for group, (models, matches, trials) in report.group_rates().items():
        print(f"  group {group}: {models} models, {matches}/{trials} false matches")
    if "other-key" not in report.group_rates():
        print(
            "  note: no reference carries another key of this scheme, so p0 covers clean "
            "models only"
        )
    print(
        f"dropped {report.dropped} key samples a reference maps to the key label; p0 <= "
        f"{report.p0:.4g} at {report.confidence:g} confidence; estimated P(an innocent model "
        f"matches more often than p0) = {report.innocent_tail:.2g} (beta-binomial fit; with "
        f"{len(report.references)} references a new model beats them all with probability up "
        f"to {report.innocent_tail_bound:.2g})"
    )


def _calibration_record(report: Any) -> dict[str, Any] | None:
    """What ``ownmark --json keygen|calibrate`` reports of a calibration (None: none ran)."""
    if report is None:
        return None
    return {
        **dataclasses.asdict(report),
        "method": report.method,
        "groups": {
            group: {"models": models, "matches": matches, "trials": trials}
            for group, (models, matches, trials) in report.group_rates().items()
        },
    }


def _key_record(key: Any, commitment: str, out: Path, report: Any) -> dict[str, Any]:
    return {
        "key": out,
        "commitment": commitment,
        "scheme": key.scheme,
        "dataset": key.dataset,
        "samples": len(key),
        "decoys": len(key.decoys),
        "key_labels": sorted(set(key.labels.tolist())),
        "p0": key.p0,
        "p0_calibrated": report is not None,
        "alpha": key.alpha,
        "max_queries": key.max_queries,
        "timestamped": bool(key.timestamp_token),
        "calibration": _calibration_record(report),
    }


def _check_plan(args: argparse.Namespace, key: Any) -> None:
    """Refuse (or with --allow-weak-key, warn about) a key whose plan cannot reach alpha."""
    from ownmark.verify import VerifyConfig
    from ownmark.verify.verifier import plan_test

    try:
        test = plan_test(key, VerifyConfig())
    except ConfigError as exc:
        if not args.allow_weak_key:
            raise ConfigError(f"{exc} (--allow-weak-key writes the key anyway)") from None
        log.warning("%s", exc)
        return
    print(
        f"plan: alpha {test.alpha:g}, budget {test.max_queries} key queries; "
        f"'owned' needs at least {test.queries_to_owned(0, 0)} matched key queries"
    )


def _timestamp(key: Any, url: str, cert: Path | None = None) -> Any:
    """``key`` with an RFC 3161 token over its commitment from the TSA at ``url``."""
    from ownmark.timestamp import encode_token, request_timestamp, verify_timestamp

    token = request_timestamp(key.commitment, url, certificate=cert)
    info = verify_timestamp(token, key.commitment, trusted_certs=[cert] if cert else None)
    print(f"time-stamped by {info.tsa} at {info.time.isoformat(timespec='seconds')}")
    return key.with_timestamp(encode_token(token))


def cmd_keygen(args: argparse.Namespace) -> int:
    from ownmark.keys import save_key
    from ownmark.preview import save_preview
    from ownmark.schemes import create_scheme, scheme_parameters

    params: dict[str, Any] = _parse_params(args.param)
    for name in ("num_keys", "source_class", "target_class", "licensee"):
        if getattr(args, name) is not None:
            params[name] = getattr(args, name)
    if "licensee" in params and "licensee" not in scheme_parameters(args.scheme):
        raise ConfigError(
            f"scheme {args.scheme!r} has no licensee payload; use --scheme udh for licensee keys"
        )
    scheme = create_scheme(args.scheme, **params)
    if not 0.0 < args.alpha < 1.0 or args.max_queries < 1:
        raise ConfigError("--alpha must lie in (0, 1) and --max-queries be at least 1")
    if args.seed is not None:
        log.warning(
            "--seed %d makes this key reproducible by anyone who knows the seed: use it for "
            "experiments only, not for a model you release",
            args.seed,
        )
    data = _load_data(args)
    key = scheme.generate(data, seed=args.seed, dataset=args.data)
    key = dataclasses.replace(key, alpha=args.alpha, max_queries=args.max_queries)
    report = None
    if args.reference:
        key, report = _calibrate(args, key, data.test)
        _check_plan(args, key)
    if args.tsa:
        key = _timestamp(key, args.tsa)
    commitment = save_key(key, args.out)
    if args.preview is not None:
        save_preview(key, args.preview)
    labels = sorted(set(key.labels.tolist()))
    print(
        f"wrote {args.out}: {len(key)} '{key.scheme}' key samples with key labels {labels}, "
        f"{len(key.decoys)} decoys; secret: {', '.join(key.params.get('secret', [])) or 'none'}"
        + (" (seed given: not secret)" if key.seed_source == "given" else "")
    )
    print(f"commitment {commitment}")
    if not key.params.get("secret"):
        log.warning(
            "this key has no secret part: anyone who uses the same parameters makes a key "
            "that matches a model carrying yours (the paper's settings are for reproductions)"
        )
    if args.preview is not None:
        print(f"preview {args.preview}")
    if report is not None:
        _print_calibration(report)
    else:
        print(
            f"p0 not calibrated: assuming {key.p0:g}, which costs many more queries; "
            "pass --reference with clean models of 2 architectures (and models carrying "
            "other keys) to calibrate"
        )
    if not args.tsa:
        print("no trusted date yet: time-stamp it with 'ownmark key timestamp KEY --tsa URL'")
    record = _key_record(key, commitment, args.out, report)
    emit(args, record | ({"preview": args.preview} if args.preview is not None else {}))
    return EXIT_OK


def cmd_calibrate(args: argparse.Namespace) -> int:
    from ownmark.data import load_dataset
    from ownmark.keys import load_key, save_key

    key = load_key(args.key)
    test = load_dataset(args.data, args.data_path).test if args.data else None
    key, report = _calibrate(args, key, test)
    _check_plan(args, key)
    commitment = save_key(key, args.out)
    print(f"wrote {args.out}: {len(key)} key samples, p0 {key.p0:.4g}")
    print(f"commitment {commitment}")
    _print_calibration(report)
    emit(args, _key_record(key, commitment, args.out, report))
    return EXIT_OK


def cmd_key(args: argparse.Namespace) -> int:
    from ownmark.cli.info import show_key
    from ownmark.keys import load_key, save_key

    if args.key_command == "timestamp":
        key = _timestamp(load_key(args.key), args.tsa, args.tsa_cert)
        save_key(key, args.key)
        print(f"wrote {args.key} with the time stamp (commitment {key.commitment})")
        emit(args, {"key": args.key, "commitment": key.commitment, "timestamped": True})
        return EXIT_OK
    # The same description as 'ownmark inspect KEY' (one formatter for both).
    show_key(args.key, args.json)
    return EXIT_OK


def cmd_preview(args: argparse.Namespace) -> int:
    from ownmark.keys import load_key
    from ownmark.preview import save_preview

    save_preview(load_key(args.key), args.out, args.count)
    print(f"wrote {args.out}")
    emit(args, {"key": args.key, "files": {"preview": args.out}})
    return EXIT_OK
