"""The argument parser: one sub-command per library call, with its options and defaults."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ownmark import __version__
from ownmark.cli.common import EXIT_ERROR
from ownmark.cli.helptext import DESCRIPTION, HelpFormatter, add_epilogs


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # Every command (sub-parsers are made with this class too) keeps its examples as
        # written and states each option's default.
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> None:  # type: ignore[override]
        # One line, like every other ownmark error, instead of argparse's usage dump.
        self.exit(EXIT_ERROR, f"ownmark: error: {message} (see '{self.prog} --help')\n")


def _names(kind: str) -> str:
    """The registered names of ``kind`` (see ``ownmark list``), for help texts."""
    from ownmark.cli.models import registries

    return ", ".join(registries()[kind].names())


def _add_data(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data",
        default="digits",
        metavar="NAME",
        help=f"data set: {_names('datasets')} (default digits, built in)",
    )
    parser.add_argument("--data-path", metavar="PATH", help="where the data set's files are")


def _add_training(parser: argparse.ArgumentParser, epochs: int) -> None:
    parser.add_argument(
        "--model",
        metavar="ARCH",
        help=f"architecture: {_names('models')}, or package.module:factory (default: the "
        "paper's network for the data)",
    )
    parser.add_argument("--epochs", type=int, default=epochs, help=f"default {epochs}")
    parser.add_argument("--batch-size", type=int, default=128, help="default 128 (Table 7)")
    parser.add_argument("--lr", type=float, default=0.01, help="SGD learning rate, default 0.01")
    parser.add_argument("--momentum", type=float, default=0.9, help="default 0.9")
    parser.add_argument("--augment", action="store_true", help="random crops and flips (CIFAR)")
    parser.add_argument("--seed", type=int, default=0, help="default 0")
    parser.add_argument(
        "--device",
        default="auto",
        help="torch device: auto (CUDA, then MPS, then CPU; default), cpu, cuda, cuda:1, mps; "
        "the metrics record the one used",
    )
    parser.add_argument(
        "--train-subset",
        type=int,
        metavar="N",
        help="train on N training images, a seeded subset with every class in proportion "
        "(default: all)",
    )
    parser.add_argument(
        "--test-subset",
        type=int,
        metavar="N",
        help="measure on N test images, chosen the same way (default: all)",
    )
    parser.add_argument("--out", required=True, type=Path, help="model file to write")
    parser.add_argument("--metrics", type=Path, help="metrics JSON (default: OUT with .json)")
    parser.add_argument(
        "--checkpoint",
        type=Path,
        help="checkpoint file, written at the end of each epoch (and see --checkpoint-every); "
        "must not exist unless --resume; removed when the run ends",
    )
    parser.add_argument(
        "--checkpoint-every",
        type=int,
        metavar="STEPS",
        help="also write --checkpoint every STEPS optimizer steps (default: at epoch ends only)",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue from the existing --checkpoint (same arguments); ends with the same "
        "weights as an uninterrupted run",
    )


def _add_params(parser: argparse.ArgumentParser, example: str) -> None:
    parser.add_argument(
        "-p",
        "--param",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help=f"parameter, repeatable, e.g. {example}",
    )


def _add_attack(commands: argparse._SubParsersAction[_Parser]) -> None:
    """``ownmark attack NAME``: one sub-command per registered attack, from the registry."""
    from ownmark.attacks import ATTACKS

    attack = commands.add_parser("attack", help="attack a model: " + ", ".join(ATTACKS.names()))
    names = attack.add_subparsers(dest="attack", required=True, parser_class=_Parser)
    for entry in ATTACKS:
        sub = names.add_parser(
            entry.name,
            help=entry.summary,
            description=f"{entry.summary}. Parameters (-p NAME=VALUE): "
            + "; ".join(
                f"{p.name} ({p.type}, default {p.default!r})" for p in entry.params.values()
            ),
        )
        sub.add_argument("--model", required=True, type=Path, help="model file to attack")
        sub.add_argument("--key", type=Path, help="measure watermark accuracy with this key")
        _add_data(sub)
        sub.add_argument(
            "--test-subset",
            type=int,
            metavar="N",
            help="use N test images, a seeded subset with every class in proportion, as "
            "'train --test-subset' (default: all)",
        )
        _add_params(sub, "-p seed=1")
        sub.add_argument(
            "--sweep",
            metavar="NAME=VALUES",
            help="run once per value: rate=0.1..0.9 (steps of 0.1), rate=0.1..0.9:0.2, "
            "epochs=1,2,5",
        )
        sub.add_argument("--out", type=Path, help="attacked model file (not with --sweep)")
        sub.add_argument("--metrics", type=Path, help="metrics JSON (default: OUT with .json)")
        sub.add_argument(
            "--artifacts",
            type=Path,
            metavar="DIR",
            help="save the images the attack makes (inverted triggers, reversed triggers) "
            "as PNG grids in DIR",
        )
        _add_allow_factory(sub)


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
        "--protocol",
        default="v2",
        help="v2 (Open Inference Protocol: ownmark serve, MLServer, Triton, KServe; default), "
        "torchserve, template, python",
    )
    parser.add_argument(
        "--model-name", help="v2 or torchserve model name (if --url does not include it)"
    )
    parser.add_argument(
        "--input-name",
        default="images",
        help="v2 image input name, default images (Triton: e.g. INPUT__0, MLServer: input-0)",
    )
    parser.add_argument(
        "--output-name", help="v2 output holding the prediction (default: found by name and type)"
    )
    parser.add_argument(
        "--input-datatype",
        default="UINT8",
        type=str.upper,
        help="tensor datatype sent: UINT8 (pixels 0..255, default), FP32, FP16",
    )
    parser.add_argument(
        "--scale",
        default="none",
        help="pixel scaling: none (0..255, default) or unit (divided by 255, into [0, 1])",
    )
    parser.add_argument(
        "--mean",
        metavar="M[,M,M]",
        help="per-channel mean subtracted after scaling, e.g. 0.1307 or 0.485,0.456,0.406",
    )
    parser.add_argument(
        "--std", metavar="S[,S,S]", help="per-channel std divided by after --mean, e.g. 0.3081"
    )
    parser.add_argument(
        "--layout", default="NCHW", type=str.upper, help="NCHW (default) or NHWC (channels last)"
    )
    parser.add_argument(
        "--input-shape",
        metavar="D,D,...",
        help="shape of one image as the model takes it, e.g. 1,28,28 or 784; needed when the "
        "v2 metadata lists no inputs (MLServer's default)",
    )
    parser.add_argument(
        "--max-batch",
        type=int,
        metavar="N",
        help="most images per HTTP request (v2, template); each --batch query is split",
    )
    parser.add_argument(
        "--labels",
        type=Path,
        metavar="FILE",
        help="class names, one per line (line 1 = class 0) or TorchServe's index_to_name.json: "
        "maps answers that name classes (torchserve, template, python)",
    )
    parser.add_argument("--template", type=Path, help="request/response template (JSON)")
    parser.add_argument(
        "--adapter",
        metavar="FILE.py:NAME",
        help="python protocol: the adapter (or MODULE:NAME); it gets --url and the options",
    )
    parser.add_argument(
        "--answer",
        default="auto",
        help="what the v2 API answers: auto (default), label, topk, probabilities",
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
    parser = _Parser(prog="ownmark", description=DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"ownmark {__version__}")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    parser.add_argument(
        "--json",
        dest="json_stdout",
        action="store_true",
        help="print the command's result as one JSON object on stdout (with 'command' and "
        "'exit_code'); its usual text goes to stderr. Goes before the command: "
        "'ownmark --json verify ...' ('verify --json FILE' still writes a file)",
    )
    commands = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", parser_class=_Parser
    )

    show = commands.add_parser("list", help="list schemes, models, attacks or data sets")
    show.add_argument(
        "what",
        nargs="?",
        default="all",
        choices=["all", "schemes", "attacks", "models", "datasets", "protocols", "backends"],
        help="which registry to list (default: all)",
    )

    data = commands.add_parser("data", help="download data sets")
    data_commands = data.add_subparsers(dest="data_command", required=True, parser_class=_Parser)
    download = data_commands.add_parser("download", help="download and verify a data set")
    download.add_argument(
        "name", choices=["mnist", "cifar10", "cifar100"], help="data set to download"
    )
    download.add_argument("--to", required=True, type=Path, help="folder to download into")
    download.add_argument(
        "--mirror", help="base URL to use instead of the official address (default: official)"
    )

    keygen = commands.add_parser("keygen", help="generate a watermark key")
    keygen.add_argument("--scheme", required=True, help=f"one of: {_names('schemes')}")
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
        "--licensee",
        type=int,
        help="licensee number whose copy this key marks (udh: the payload 'licensee N'; "
        "see 'ownmark trace')",
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
    show_key = key_commands.add_parser(
        "show",
        help="print what a key commits to (as 'ownmark inspect KEY')",
        description="Print a key's scheme, resolved parameters (secrets included: the key "
        "file is secret), data set, p0 and its calibration, plan, commitment and time stamp.",
    )
    show_key.add_argument("key", type=Path, help="key file")
    show_key.add_argument("--json", action="store_true", help="print it as JSON to stdout")

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
    preview.add_argument("key", type=Path, help="key file")
    preview.add_argument("--out", required=True, type=Path, help="PNG file to write")
    preview.add_argument(
        "--count", type=int, default=16, help="key samples shown (original and trigger each)"
    )

    train = commands.add_parser("train", help="train a clean model")
    _add_data(train)
    _add_training(train, epochs=50)

    embed = commands.add_parser("embed", help="train (or fine-tune) a model with a key embedded")
    embed.add_argument(
        "--key", required=True, type=Path, help="key file to embed (from 'ownmark keygen')"
    )
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
    verify.add_argument(
        "--key", required=True, type=Path, help="the owner's key file (embedded in the model)"
    )
    target = verify.add_mutually_exclusive_group(required=True)
    target.add_argument("--model", type=Path, help="suspect model file (in this process)")
    target.add_argument(
        "--url",
        help="suspect prediction API (with --protocol python and no --adapter: the adapter)",
    )
    _add_remote(verify)
    _add_verify_options(verify)
    _add_allow_factory(verify)

    trace = commands.add_parser(
        "trace", help="name the licensee whose copy a suspect serves (one key per licensee)"
    )
    trace.add_argument(
        "--keys",
        required=True,
        type=Path,
        help="folder of the licensees' key files (*.safetensors; the file stem names each)",
    )
    trace_target = trace.add_mutually_exclusive_group(required=True)
    trace_target.add_argument("--model", type=Path, help="suspect model file (in this process)")
    trace_target.add_argument("--url", help="suspect prediction API")
    trace.add_argument(
        "--alpha", type=float, help="false-attribution rate (default: each key's plan)"
    )
    _add_remote(trace)
    _add_allow_factory(trace)

    evidence = commands.add_parser("evidence", help="check evidence files; make signing keys")
    evidence_commands = evidence.add_subparsers(
        dest="evidence_command", required=True, parser_class=_Parser
    )
    check = evidence_commands.add_parser("check", help="re-check an evidence file against a key")
    check.add_argument("evidence", type=Path, help="evidence JSON written by 'ownmark verify'")
    check.add_argument(
        "--key", required=True, type=Path, help="the key file the evidence was made with"
    )
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
    serve.add_argument("--backend", default="torch", help=f"{_names('backends')} (default torch)")
    serve.add_argument("--host", default="127.0.0.1", help="default 127.0.0.1")
    serve.add_argument("--port", type=int, default=8000, help="default 8000")
    serve.add_argument("--name", help="model name in the URL (default: the file name's stem)")
    serve.add_argument("--answer", default="label", help="label (default), topk or probabilities")
    serve.add_argument("--top-k", type=int, default=5, help="labels per image for topk")
    serve.add_argument("--max-batch", type=int, default=256, help="most images per request")
    serve.add_argument(
        "--max-body-mb", type=float, default=16.0, help="largest request body, in MiB"
    )
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
    export.add_argument("model", type=Path, help="model file (.safetensors) to export")
    export.add_argument("--onnx", required=True, type=Path, help="ONNX file to write")
    _add_allow_factory(export)

    _add_attack(commands)
    from ownmark.cli.matrix_parser import add_matrix  # its own module: parser.py is long

    add_matrix(commands)

    demo = commands.add_parser(
        "demo",
        help="the whole flow on the built-in MNIST digits (about 100 s on 2 CPU cores)",
        description="The whole flow on the 5,000 built-in MNIST digits, offline: train a clean "
        "model, clean references of two architectures and models carrying other owners' keys; "
        "make a secret key and calibrate its p0 on the references; embed it; prune and "
        "fine-tune the watermarked model; then serve every suspect on 127.0.0.1 and verify it "
        "through its API only. Takes about 100 s on 2 CPU cores (more with --epochs), with a "
        "numbered line per step.\n\n"
        "Writes under --out: README.md (what every file is), each model's .safetensors with "
        "its metrics .json (same name), key.safetensors (the owner's secret key) and "
        "key-preview.png, calibration.json, evidence/ (an evidence file and a readable report "
        "per verified suspect), summary.md and summary.json (the results table with scheme, "
        "key, p0 and alpha).",
    )
    demo.add_argument(
        "--out",
        type=Path,
        default=Path("ownmark-demo"),
        help="output folder, created if needed (default: ownmark-demo)",
    )
    demo.add_argument(
        "--scheme", default="content", help=f"one of: {_names('schemes')} (default content)"
    )
    demo.add_argument("--epochs", type=int, default=8, help="training epochs, default 8")
    demo.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the models and (offset) of the demo's keys, default 0",
    )
    _add_info(commands)
    add_epilogs(parser)
    return parser


def _add_info(commands: argparse._SubParsersAction[_Parser]) -> None:
    """``ownmark env``, ``ownmark inspect`` and ``ownmark completion``."""
    env = commands.add_parser(
        "env",
        help="report versions, the torch build, the device and the machine",
        description="Print ownmark's, Python's and torch's versions, torch's build (CPU, CUDA, "
        "ROCm) and backends, the device '--device auto' picks (CUDA, then MPS, then CPU), "
        "torch's threads, the versions of the packages ownmark uses (or 'not installed'), "
        "the platform, CPU model and core count. Attach it to bug reports.",
    )
    env.add_argument("--json", action="store_true", help="print the report as JSON to stdout")

    inspect = commands.add_parser(
        "inspect",
        help="describe a key, model or evidence file",
        description="Tell what PATH is (an ownmark key, model or evidence file) and print what "
        "it holds. Key: scheme, resolved parameters (secrets included: the key file is "
        "secret), data set, classes, key samples and decoys, seed, p0 and its calibration, "
        "plan, released model, commitment, time stamp. Model: architecture, classes, input, "
        "normalisation, recorded metadata, parameter count and SHA-256 (the weights are not "
        "loaded and no model code runs). Evidence: verdict, p-value, suspect, key "
        "commitment, queries, control group, signature (not re-checked: see 'ownmark "
        "evidence check').",
    )
    inspect.add_argument("path", type=Path, help="key (.safetensors), model or evidence (.json)")
    inspect.add_argument("--json", action="store_true", help="print it as JSON to stdout")

    completion = commands.add_parser(
        "completion",
        help="shell completion of commands and options (needs ownmark[completion])",
        description="Print the lines that turn on completion of ownmark's commands, options "
        "and file names in bash or zsh, using argcomplete (pip install 'ownmark[completion]'). "
        "With --script, print the completion script itself instead.",
    )
    completion.add_argument("shell", choices=["bash", "zsh"], help="your shell")
    completion.add_argument(
        "--script",
        action="store_true",
        help="print the whole completion script (for a completions folder) instead of the "
        "activation line",
    )
