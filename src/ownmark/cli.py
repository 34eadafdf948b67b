"""The ``ownmark`` command line: parses arguments, calls the library, prints results.

Exit codes: 0 success / owned, 1 not owned, 2 bad input or usage, 3 inconclusive;
``evidence check``: 0 intact and signed by the pinned key, 1 invalid, 4 intact but unsigned.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ownmark import __version__
from ownmark.errors import ConfigError, OwnmarkError

EXIT_OK, EXIT_NOT_OWNED, EXIT_ERROR, EXIT_INCONCLUSIVE = 0, 1, 2, 3
#: ``evidence check``: intact and consistent, but not signed by a pinned key.
EXIT_UNSIGNED = 4
log = logging.getLogger("ownmark")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        # One line, like every other ownmark error, instead of argparse's usage dump.
        self.exit(EXIT_ERROR, f"ownmark: error: {message} (see '{self.prog} --help')\n")


# ---------------------------------------------------------------- argument groups


def _add_data(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data",
        default="digits",
        metavar="NAME",
        help="data set: digits (built in, default), mnist, cifar10, cifar100, folder",
    )
    parser.add_argument("--data-path", metavar="PATH", help="where the data set's files are")


def _add_training(parser: argparse.ArgumentParser, epochs: int) -> None:
    parser.add_argument("--model", metavar="ARCH", help="architecture (see 'ownmark list models')")
    parser.add_argument("--epochs", type=int, default=epochs, help=f"default {epochs}")
    parser.add_argument("--batch-size", type=int, default=128, help="default 128 (Table 7)")
    parser.add_argument("--lr", type=float, default=0.01, help="SGD learning rate, default 0.01")
    parser.add_argument("--momentum", type=float, default=0.9, help="default 0.9")
    parser.add_argument("--augment", action="store_true", help="random crops and flips (CIFAR)")
    parser.add_argument("--seed", type=int, default=0, help="default 0")
    parser.add_argument("--device", default="cpu", help="torch device, default cpu")
    parser.add_argument("--out", required=True, type=Path, help="model file to write")
    parser.add_argument("--metrics", type=Path, help="metrics JSON (default: OUT with .json)")
    parser.add_argument("--checkpoint", type=Path, help="per-epoch checkpoint file")
    parser.add_argument("--resume", action="store_true", help="continue from --checkpoint")


def _add_allow_factory(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--allow-factory",
        metavar="MODULE:FACTORY",
        help="load a model file whose architecture is this user code (only if you trust it)",
    )


def _add_calibration(parser: argparse.ArgumentParser, required: bool) -> None:
    parser.add_argument(
        "--reference",
        nargs="+",
        type=Path,
        required=required,
        default=[],
        metavar="MODEL",
        help="innocent reference model files to calibrate p0 on: clean ones (>= 2 seeds, >= 2 "
        "architectures) and models carrying other keys of the same scheme (recognised by "
        "the key commitment 'ownmark embed' stores in them)",
    )
    parser.add_argument(
        "--confidence", type=float, default=0.999, help="of p0's upper bound, default 0.999"
    )
    parser.add_argument(
        "--min-reference-accuracy",
        type=float,
        default=0.5,
        help="refuse references below this test accuracy (near chance), default 0.5",
    )
    parser.add_argument(
        "--allow-weak-key",
        action="store_true",
        help="write a calibrated key even if its plan cannot reach alpha (default: refuse)",
    )
    _add_allow_factory(parser)


def _add_verify_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--alpha",
        type=float,
        help="false-claim rate (default: the key's plan, 1e-6); every value tried after seeing "
        "a result adds up to alpha to the false-claim rate",
    )
    parser.add_argument("--p0", type=float, help="false-match bound (default: from the key)")
    parser.add_argument(
        "--max-queries", type=int, help="key-query budget (default: the key's plan, 100)"
    )
    parser.add_argument(
        "--fixed",
        action="store_true",
        help="spend the whole budget and test once (default: stop as soon as it is clear)",
    )
    parser.add_argument(
        "--batch",
        type=int,
        default=16,
        help="images in every request, key samples plus decoys (constant), default 16",
    )
    parser.add_argument(
        "--decoys",
        type=float,
        default=1.0,
        metavar="RATIO",
        help="at least RATIO of the key's decoy images per key image, default 1; 0 sends no "
        "control group (a constant API can then match a one-label key)",
    )
    parser.add_argument(
        "--control-level",
        type=float,
        default=0.01,
        help="level of the decoy control tests, default 0.01",
    )
    parser.add_argument(
        "--max-errors", type=int, default=10, help="failed queries tolerated, default 10"
    )
    parser.add_argument(
        "--dismiss-below",
        type=float,
        metavar="RATE",
        help="stop early with 'not owned' once a match rate of RATE is implausible (e.g. 0.5); "
        "saves queries on innocent models but can dismiss a heavily attacked watermark",
    )
    parser.add_argument(
        "--first-seen",
        metavar="DATE",
        help="ISO date the suspect model was first seen or released; evidence check flags a "
        "key time-stamped after it (a key that could have been forged from the model)",
    )
    parser.add_argument(
        "--evidence",
        type=Path,
        help="evidence JSON to write (default ownmark-evidence/verify-<UTC time>.json), "
        "with a .md report beside it",
    )
    parser.add_argument("--sign-key", type=Path, help="Ed25519 private key (PEM) to sign with")
    parser.add_argument("--json", type=Path, help="also write the result summary as JSON")


def _add_remote(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--protocol", default="v2", help="v2 (Open Inference Protocol, default), template, python"
    )
    parser.add_argument("--model-name", help="v2 model name (if --url does not include it)")
    parser.add_argument(
        "--input-name", default="images", help="v2 image input name (Triton: e.g. INPUT__0)"
    )
    parser.add_argument("--template", type=Path, help="request/response template (JSON)")
    parser.add_argument(
        "--answer",
        default="auto",
        help="what the API answers: auto (default), label, topk, probabilities",
    )
    parser.add_argument(
        "--token", help="bearer token (default: the OWNMARK_TOKEN environment variable)"
    )
    parser.add_argument(
        "--timeout", type=float, default=10.0, help="seconds per request, default 10"
    )
    parser.add_argument("--retries", type=int, default=3, help="retries per request, default 3")
    parser.add_argument(
        "--deadline",
        type=float,
        default=60.0,
        help="most seconds one request may take, connect to last byte, default 60",
    )
    parser.add_argument(
        "--time-budget",
        type=float,
        default=600.0,
        help="most seconds the whole run may spend on the suspect, waits included, default 600",
    )
    parser.add_argument(
        "--max-retry-after",
        type=float,
        default=30.0,
        help="longest Retry-After honoured in seconds (longer fails the request), default 30",
    )
    parser.add_argument(
        "--max-response-mb",
        type=float,
        default=8.0,
        help="largest answer read, in MiB after decompression, default 8",
    )
    parser.add_argument(
        "--rate-limit", type=float, metavar="RPS", help="most requests per second to send"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="ownmark", description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--version", action="version", version=f"ownmark {__version__}")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    commands = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", parser_class=_Parser
    )

    show = commands.add_parser("list", help="list schemes, models, attacks or data sets")
    show.add_argument(
        "what",
        nargs="?",
        default="all",
        choices=["all", "schemes", "models", "attacks", "datasets"],
    )

    data = commands.add_parser("data", help="download data sets")
    data_commands = data.add_subparsers(dest="data_command", required=True, parser_class=_Parser)
    download = data_commands.add_parser("download", help="download and verify a data set")
    download.add_argument("name", choices=["mnist", "cifar10", "cifar100"])
    download.add_argument("--to", required=True, type=Path, help="folder to download into")
    download.add_argument("--mirror", help="base URL to use instead of the official address")

    keygen = commands.add_parser("keygen", help="generate a watermark key")
    keygen.add_argument("--scheme", required=True, help="see 'ownmark list schemes'")
    _add_data(keygen)
    keygen.add_argument("--out", required=True, type=Path, help="key file to write")
    keygen.add_argument(
        "--seed",
        type=int,
        help="make the key reproducible, for experiments only: anyone who knows the seed and "
        "the parameters can make the same key (default: a fresh secret)",
    )
    keygen.add_argument("--num-keys", type=int, help="trigger images (default 100)")
    keygen.add_argument(
        "--source-class",
        type=int,
        help="class that carries the trigger (default: every class; the paper's: 1)",
    )
    keygen.add_argument(
        "--target-class",
        type=int,
        help="key label (default: a secret label per class; the paper's: 0)",
    )
    keygen.add_argument(
        "--alpha",
        type=float,
        default=1e-6,
        help="false-claim rate the key's verifications use, default 1e-6",
    )
    keygen.add_argument(
        "--max-queries",
        type=int,
        default=100,
        help="key-query budget the key's verifications use, default 100",
    )
    keygen.add_argument("--tsa", metavar="URL", help="time-stamp the key's commitment (RFC 3161)")
    keygen.add_argument(
        "-p",
        "--param",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="scheme parameter, e.g. -p text=TEST -p logo=logo.png",
    )
    keygen.add_argument("--preview", type=Path, help="also save a PNG of originals and triggers")
    _add_calibration(keygen, required=False)

    key_group = commands.add_parser("key", help="time-stamp or inspect a key file")
    key_commands = key_group.add_subparsers(dest="key_command", required=True, parser_class=_Parser)
    stamp = key_commands.add_parser(
        "timestamp", help="get an RFC 3161 time stamp on a key's commitment (rewrites the key)"
    )
    stamp.add_argument("key", type=Path, help="key file")
    stamp.add_argument("--tsa", required=True, metavar="URL", help="time-stamping authority")
    stamp.add_argument("--tsa-cert", type=Path, help="the TSA's certificate to check against")
    show_key = key_commands.add_parser("show", help="print what a key commits to")
    show_key.add_argument("key", type=Path, help="key file")

    calibrate = commands.add_parser(
        "calibrate", help="calibrate an existing key's p0 on innocent reference models"
    )
    calibrate.add_argument("key", type=Path, help="key file to calibrate")
    calibrate.add_argument("--out", required=True, type=Path, help="calibrated key file to write")
    calibrate.add_argument(
        "--data", help="data set whose test split measures each reference's accuracy"
    )
    calibrate.add_argument("--data-path", metavar="PATH", help="where --data's files are")
    _add_calibration(calibrate, required=True)

    preview = commands.add_parser("preview", help="save a PNG of a key's images")
    preview.add_argument("key", type=Path)
    preview.add_argument("--out", required=True, type=Path)
    preview.add_argument("--count", type=int, default=16)

    train = commands.add_parser("train", help="train a clean model")
    _add_data(train)
    _add_training(train, epochs=50)

    embed = commands.add_parser("embed", help="train (or fine-tune) a model with a key embedded")
    embed.add_argument("--key", required=True, type=Path)
    _add_data(embed)
    _add_training(embed, epochs=50)
    embed.add_argument("--from", dest="init", type=Path, help="fine-tune this model file")
    embed.add_argument(
        "--key-out",
        type=Path,
        help="key file bound to the released model's SHA-256 (default: rewrite --key); "
        "time-stamp it afterwards",
    )
    embed.add_argument(
        "--key-ratio",
        type=float,
        default=0.15,
        help="fraction of each epoch that is key samples, default 0.15 (the paper's one-class "
        "keys learn at 0.05)",
    )
    _add_allow_factory(embed)

    verify = commands.add_parser("verify", help="verify ownership of a suspect model or API")
    verify.add_argument("--key", required=True, type=Path)
    target = verify.add_mutually_exclusive_group(required=True)
    target.add_argument("--model", type=Path, help="suspect model file (in this process)")
    target.add_argument(
        "--url", help="suspect prediction API (or, with --protocol python, MODULE:CALLABLE)"
    )
    _add_remote(verify)
    _add_verify_options(verify)
    _add_allow_factory(verify)

    evidence = commands.add_parser("evidence", help="check evidence files; make signing keys")
    evidence_commands = evidence.add_subparsers(
        dest="evidence_command", required=True, parser_class=_Parser
    )
    check = evidence_commands.add_parser("check", help="re-check an evidence file against a key")
    check.add_argument("evidence", type=Path)
    check.add_argument("--key", required=True, type=Path)
    check.add_argument(
        "--public-key",
        type=Path,
        help="require a signature by this key (PEM); without it the exit code is 4",
    )
    check.add_argument(
        "--tsa-cert", type=Path, help="certificate the key's time stamp must chain to"
    )
    keypair = evidence_commands.add_parser("keypair", help="make an Ed25519 signing key pair")
    keypair.add_argument("out", type=Path, help="private key file (the public key gets .pub)")

    serve = commands.add_parser("serve", help="serve a model over HTTP (Open Inference Protocol)")
    serve.add_argument("model", type=Path, help="model file (.safetensors, or .onnx)")
    serve.add_argument("--backend", default="torch", help="torch (default) or onnxruntime")
    serve.add_argument("--host", default="127.0.0.1", help="default 127.0.0.1")
    serve.add_argument("--port", type=int, default=8000, help="default 8000")
    serve.add_argument("--name", help="model name in the URL (default: the file name's stem)")
    serve.add_argument("--answer", default="label", help="label (default), topk or probabilities")
    serve.add_argument("--top-k", type=int, default=5, help="labels per image for topk")
    serve.add_argument("--max-batch", type=int, default=256, help="images per request")
    serve.add_argument("--max-body-mb", type=float, default=16.0, help="request size limit")
    serve.add_argument(
        "--token", help="require this bearer token (default: OWNMARK_SERVE_TOKEN if set)"
    )
    serve.add_argument("--access-log", type=Path, help="JSON-lines access log (default stderr)")
    serve.add_argument(
        "--max-concurrency",
        type=int,
        default=8,
        help="inference requests at once (beyond: 503 Retry-After), default 8",
    )
    serve.add_argument(
        "--body-timeout",
        type=float,
        default=10.0,
        help="seconds to receive a request body (else 408), default 10",
    )
    serve.add_argument(
        "--header-timeout",
        type=float,
        default=10.0,
        help="seconds to receive a request head (else the connection is closed), default 10",
    )
    serve.add_argument(
        "--max-connections", type=int, default=256, help="open connections at most, default 256"
    )
    _add_allow_factory(serve)

    export = commands.add_parser("export", help="export a model file to ONNX")
    export.add_argument("model", type=Path)
    export.add_argument("--onnx", required=True, type=Path, help="ONNX file to write")
    _add_allow_factory(export)

    attack = commands.add_parser("attack", help="attack a model (pruning, fine-tuning)")
    attack_commands = attack.add_subparsers(dest="attack", required=True, parser_class=_Parser)
    prune = attack_commands.add_parser("prune", help="magnitude pruning")
    prune.add_argument(
        "--rate", required=True, help="fraction to zero: 0.5, a list 0.1,0.5 or a sweep 0.1..0.9"
    )
    prune.add_argument("--per-layer", action="store_true", help="prune each layer by the rate")
    finetune = attack_commands.add_parser("finetune", help="fine-tune on half of the test set")
    finetune.add_argument("--epochs", type=int, default=10, help="default 10")
    finetune.add_argument("--lr", type=float, default=0.01, help="default 0.01")
    finetune.add_argument("--seed", type=int, default=0)
    finetune.add_argument("--device", default="cpu")
    for sub in (prune, finetune):
        sub.add_argument("--model", required=True, type=Path, help="model file to attack")
        sub.add_argument("--key", type=Path, help="measure watermark accuracy with this key")
        _add_data(sub)
        sub.add_argument("--out", type=Path, help="attacked model file (one rate only)")
        sub.add_argument("--metrics", type=Path, help="metrics JSON")
        _add_allow_factory(sub)

    demo = commands.add_parser("demo", help="the whole flow on the built-in MNIST digits")
    demo.add_argument("--out", type=Path, default=Path("ownmark-demo"), help="output folder")
    demo.add_argument("--scheme", default="content", help="default content")
    demo.add_argument("--epochs", type=int, default=8, help="training epochs, default 8")
    demo.add_argument("--seed", type=int, default=0)
    return parser


# ---------------------------------------------------------------- helpers


def _progress(args: argparse.Namespace) -> bool:
    return not args.quiet


def _load_data(args: argparse.Namespace) -> Any:
    from ownmark.data import load_dataset

    return load_dataset(args.data, args.data_path)


def _parse_params(pairs: Sequence[str]) -> dict[str, str]:
    params: dict[str, str] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise ConfigError(f"scheme parameters look like NAME=VALUE, got {pair!r}")
        params[name.strip().replace("-", "_")] = value
    return params


def parse_rates(text: str) -> list[float]:
    """``0.5`` → [0.5]; ``0.1,0.5`` → [0.1, 0.5]; ``0.1..0.9`` → 0.1, 0.2, …, 0.9."""
    try:
        if ".." in text:
            lo_text, hi_text = text.split("..")
            lo, hi = float(lo_text), float(hi_text)
            if hi < lo:
                raise ConfigError(f"--rate sweep {text!r} runs backwards; write LOW..HIGH")
            steps = math.floor((hi - lo) / 0.1 + 1e-9)
            rates = [round(lo + 0.1 * i, 10) for i in range(steps + 1)]
        else:
            rates = [float(v) for v in text.split(",")]
    except ValueError:
        raise ConfigError(f"--rate takes 0.5, 0.1,0.5 or 0.1..0.9, got {text!r}") from None
    if not rates or any(not 0 <= r <= 1 for r in rates):
        raise ConfigError(f"pruning rates must lie in 0..1, got {text!r}")
    return rates


def _train_config(args: argparse.Namespace, key_ratio: float = 0.05) -> Any:
    from ownmark.train import TrainConfig

    return TrainConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        momentum=args.momentum,
        seed=args.seed,
        key_ratio=key_ratio,
        augment=args.augment,
        device=args.device,
    )


def _metrics_path(args: argparse.Namespace) -> Path:
    path: Path = args.metrics if args.metrics is not None else args.out.with_suffix(".json")
    return path


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"


# ---------------------------------------------------------------- commands


def cmd_list(args: argparse.Namespace) -> int:
    from ownmark.attacks import get_attack_class, list_attacks
    from ownmark.data import DATASET_DESCRIPTIONS
    from ownmark.models import model_descriptions
    from ownmark.schemes import get_scheme_class, list_schemes, scheme_parameters

    if args.what in ("all", "schemes"):
        print("schemes:")
        for name in list_schemes():
            print(f"  {name:10s} {get_scheme_class(name).summary}")
            params = ", ".join(f"{k}={v!r}" for k, (_, v) in scheme_parameters(name).items())
            print(f"  {'':10s}   parameters: {params}")
    if args.what in ("all", "models"):
        print("models:")
        for name, text in model_descriptions().items():
            print(f"  {name:14s} {text}")
    if args.what in ("all", "attacks"):
        print("attacks:")
        for name in list_attacks():
            print(f"  {name:10s} {get_attack_class(name).summary}")
    if args.what in ("all", "datasets"):
        print("data sets:")
        for name, text in DATASET_DESCRIPTIONS.items():
            print(f"  {name:10s} {text}")
    return EXIT_OK


def cmd_data(args: argparse.Namespace) -> int:
    from ownmark.data import download_dataset

    files = download_dataset(args.name, args.to, mirror=args.mirror, progress=_progress(args))
    for file in files:
        print(f"verified {file}")
    return EXIT_OK


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
    from ownmark.schemes import create_scheme

    params: dict[str, Any] = _parse_params(args.param)
    for name in ("num_keys", "source_class", "target_class"):
        if getattr(args, name) is not None:
            params[name] = getattr(args, name)
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
    return EXIT_OK


def cmd_key(args: argparse.Namespace) -> int:
    from ownmark.keys import load_key, save_key

    key = load_key(args.key)
    if args.key_command == "timestamp":
        key = _timestamp(key, args.tsa, args.tsa_cert)
        save_key(key, args.key)
        print(f"wrote {args.key} with the time stamp (commitment {key.commitment})")
        return EXIT_OK
    print(f"commitment {key.commitment}")
    print(
        f"scheme {key.scheme}, {len(key)} key samples, {len(key.decoys)} decoys, data {key.dataset}"
    )
    print(f"p0 {key.p0:.4g}; plan: alpha {key.alpha:g}, budget {key.max_queries}")
    print(f"seed {key.seed_source}; created (self-declared) {key.created}")
    print(f"released model sha256: {key.released_model_sha256 or 'none bound'}")
    print("time stamp: " + ("attached" if key.timestamp_token else "none (no trusted date)"))
    return EXIT_OK


def cmd_preview(args: argparse.Namespace) -> int:
    from ownmark.keys import load_key
    from ownmark.preview import save_preview

    save_preview(load_key(args.key), args.out, args.count)
    print(f"wrote {args.out}")
    return EXIT_OK


def cmd_train(args: argparse.Namespace) -> int:
    from ownmark.keys import load_key
    from ownmark.models import load_model
    from ownmark.workflows import train_model

    embedding = args.command == "embed"
    key = load_key(args.key) if embedding else None
    init = (
        load_model(args.init, args.allow_factory) if embedding and args.init is not None else None
    )
    data = _load_data(args)
    config = _train_config(args, key_ratio=args.key_ratio if embedding else 0.0)
    _, result = train_model(
        data,
        config,
        arch=args.model,
        key=key,
        init=init,
        out=args.out,
        metrics_out=_metrics_path(args),
        checkpoint=args.checkpoint,
        resume=args.resume,
        progress=_progress(args),
    )
    print(f"wrote {args.out} and {_metrics_path(args)}")
    if key is not None:
        from ownmark.keys import save_key

        key_out = args.key_out or args.key
        commitment = save_key(key.bound_to_model(args.out), key_out)
        print(
            f"wrote {key_out}: the key now binds {args.out} (new commitment {commitment}); "
            "time-stamp it with 'ownmark key timestamp'"
        )
    print(f"test accuracy {_fmt(result.test_accuracy)}", end="")
    if key is not None:
        print(f", watermark accuracy {_fmt(result.watermark_accuracy)}", end="")
    print(f", {result.epochs} epochs in {result.seconds:.1f} s")
    return EXIT_OK


def _suspect(args: argparse.Namespace, key: Any) -> Any:
    """The suspect to query: a local model file, or an API through a protocol adapter."""
    if args.model is not None:
        from ownmark.models import load_model
        from ownmark.verify import LocalModelSuspect
        from ownmark.workflows import check_compatible

        model = load_model(args.model, args.allow_factory)
        check_compatible(model, key=key)
        return LocalModelSuspect(model, str(args.model))
    from ownmark.verify.protocols import HttpPolicy, open_suspect

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
    # Every suspect open_suspect returns has close(); the Suspect protocol does not require it.
    suspect: Any = open_suspect(
        args.url,
        args.protocol,
        model=args.model_name,
        policy=policy,
        answer=args.answer,
        template=str(args.template) if args.template is not None else None,
        input_name=args.input_name,
    )
    try:
        if hasattr(suspect, "check_input_shape"):
            # One metadata request up front beats spending the budget on images it can't take.
            suspect.check_input_shape(key.image_shape)
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
    plan_test(key, config)
    if args.sign_key is not None:
        load_signing_key(args.sign_key)
    evidence_path = _evidence_path(args)
    if suspect is None:
        suspect = _suspect(args, key)
    try:
        result = verify_ownership(key, suspect, config)
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
    http = f" ({sent} HTTP requests incl. retries and metadata)" if sent is not None else ""
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
    print(f"verdict: {result.verdict.value}")
    print(f"evidence {json_path} (report {report_path})")
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
        return EXIT_OK
    check = check_evidence(
        args.evidence,
        load_key(args.key),
        public_key=args.public_key,
        trusted_tsa_certs=[args.tsa_cert] if args.tsa_cert else None,
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


def cmd_serve(args: argparse.Namespace) -> int:
    from ownmark.serve import ServeConfig, load_backend, serve_forever

    backend = load_backend(args.model, args.backend, allow_factory=args.allow_factory)
    config = ServeConfig(
        model_name=args.name or args.model.stem,
        answer=args.answer,
        top_k=args.top_k,
        max_batch=args.max_batch,
        max_body_bytes=int(args.max_body_mb * 2**20),
        token=args.token or os.environ.get("OWNMARK_SERVE_TOKEN") or None,
        access_log=str(args.access_log) if args.access_log is not None else None,
        max_concurrency=args.max_concurrency,
        body_timeout=args.body_timeout,
        header_timeout=args.header_timeout,
        max_connections=args.max_connections,
    )
    if config.access_log is None:
        access = logging.getLogger("ownmark.access")
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        access.addHandler(handler)
        access.setLevel(logging.INFO)
        access.propagate = False
    serve_forever(backend, config, args.host, args.port)
    return EXIT_OK


def cmd_export(args: argparse.Namespace) -> int:
    from ownmark.models import load_model
    from ownmark.serve import export_onnx

    path = export_onnx(load_model(args.model, args.allow_factory), args.onnx)
    print(f"wrote {path} (ONNX; serve it with 'ownmark serve {path} --backend onnxruntime')")
    return EXIT_OK


def cmd_attack(args: argparse.Namespace) -> int:
    from ownmark.attacks import AttackData, FineTuning, MagnitudePruning
    from ownmark.fileio import write_json_atomic
    from ownmark.keys import load_key
    from ownmark.models import load_model
    from ownmark.workflows import attack_model, check_compatible, prune_sweep, run_record

    model = load_model(args.model, args.allow_factory)
    key = load_key(args.key) if args.key is not None else None
    data = _load_data(args)
    check_compatible(model, key=key, data=data)
    if args.attack == "finetune":
        first, second = data.test.halves()
        attack = FineTuning(
            epochs=args.epochs,
            lr=args.lr,
            seed=args.seed,
            device=args.device,
            progress=_progress(args),
        )
        _, metrics = attack_model(
            model, attack, data=AttackData(train=first, test=second), key=key, out=args.out
        )
        rows = [metrics]
    else:
        rates = parse_rates(args.rate)
        scope = "layer" if args.per_layer else "global"
        if len(rates) == 1:
            _, metrics = attack_model(
                model,
                MagnitudePruning(rates[0], scope),
                data=AttackData(test=data.test),
                key=key,
                out=args.out,
            )
            rows = [metrics]
        elif args.out is not None:
            raise ConfigError("--out takes one pruning rate; drop --out to sweep several rates")
        else:
            rows = prune_sweep(model, rates, scope=scope, test=data.test, key=key)
    print(f"{'attack':24s} {'test acc':>9s} {'wm acc':>9s}")
    for row in rows:
        label = ", ".join(
            f"{k}={v}"
            for k, v in row["attack"].items()
            if k in ("attack", "rate", "scope", "epochs")
        )
        print(f"{label:24s} {_fmt(row['test_accuracy']):>9s} {_fmt(row['watermark_accuracy']):>9s}")
    if args.metrics is not None or args.out is not None:
        path = _metrics_path(args)
        write_json_atomic(
            path, rows[0] if len(rows) == 1 else run_record(task="attack sweep", results=rows)
        )
        print(f"wrote {path}")
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    from ownmark.demo import run_demo

    summary = run_demo(
        args.out, scheme=args.scheme, epochs=args.epochs, seed=args.seed, progress=_progress(args)
    )
    print(summary.table())
    print(f"files in {args.out}/")
    return EXIT_OK if summary.correct else EXIT_NOT_OWNED


COMMANDS = {
    "list": cmd_list,
    "data": cmd_data,
    "keygen": cmd_keygen,
    "preview": cmd_preview,
    "train": cmd_train,
    "embed": cmd_train,
    "calibrate": cmd_calibrate,
    "key": cmd_key,
    "verify": cmd_verify,
    "evidence": cmd_evidence,
    "serve": cmd_serve,
    "export": cmd_export,
    "attack": cmd_attack,
    "demo": cmd_demo,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``ownmark`` command; returns the exit code."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="ownmark: %(message)s")
    try:
        return COMMANDS[args.command](args)
    except OwnmarkError as exc:
        print(f"ownmark: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except OSError as exc:
        # File system problems with outputs (a folder where a file should go, no permission).
        where = f": {exc.filename}" if exc.filename else ""
        print(f"ownmark: error: {exc.strerror or exc}{where}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("ownmark: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if os.environ.get("OWNMARK_DEBUG"):
            raise
        print(
            f"ownmark: error: unexpected {type(exc).__name__}: {exc} "
            "(set OWNMARK_DEBUG=1 for the traceback and please report it)",
            file=sys.stderr,
        )
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
