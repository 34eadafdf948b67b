"""Model and data commands: list, data, train / embed, serve, export, attack, demo."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from ownmark.cli.common import (
    EXIT_NOT_OWNED,
    EXIT_OK,
    _fmt,
    _load_data,
    _metrics_path,
    _progress,
    _train_config,
    parse_rates,
)
from ownmark.errors import ConfigError


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
