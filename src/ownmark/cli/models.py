"""Model and data commands: list, data, train / embed, serve, export, attack, demo."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Any

from ownmark.cli.common import (
    EXIT_ERROR,
    EXIT_NOT_OWNED,
    EXIT_OK,
    _fmt,
    _load_data,
    _metrics_path,
    _parse_params,
    _progress,
    _train_config,
    emit,
    json_mode,
)
from ownmark.errors import ConfigError
from ownmark.registry import import_plugins, parse_sweep


def registries() -> dict[str, Any]:
    """Every registry ``ownmark list`` shows, by the plural the command line uses."""
    from ownmark.attacks import ATTACKS
    from ownmark.data import DATASET_REGISTRY
    from ownmark.models import MODELS
    from ownmark.schemes import SCHEMES
    from ownmark.serve import BACKEND_REGISTRY
    from ownmark.verify.remote import PROTOCOLS

    return {
        "schemes": SCHEMES,
        "attacks": ATTACKS,
        "models": MODELS,
        "datasets": DATASET_REGISTRY,
        "protocols": PROTOCOLS,
        "backends": BACKEND_REGISTRY,
    }


def cmd_list(args: argparse.Namespace) -> int:
    listed: dict[str, list[dict[str, Any]]] = {}
    for plural, registry in registries().items():
        if args.what not in ("all", plural):
            continue
        listed[plural] = [
            {
                "name": entry.name,
                "summary": entry.summary,
                "params": {
                    p.name: {"type": str(p.type), "default": p.default}
                    for p in entry.params.values()
                },
            }
            for entry in registry
        ]
        print(f"{plural}:")
        for entry in registry:
            print(f"  {entry.name:14s} {entry.summary}")
            # Models all take the data's shape; their parameters say nothing new.
            if entry.params and plural in ("schemes", "attacks"):
                params = ", ".join(f"{p.name}={p.default!r}" for p in entry.params.values())
                print(f"  {'':14s}   parameters: {params}")
    emit(args, listed)
    return EXIT_OK


def cmd_data(args: argparse.Namespace) -> int:
    from ownmark.data import download_dataset

    files = download_dataset(args.name, args.to, mirror=args.mirror, progress=_progress(args))
    for file in files:
        print(f"verified {file}")
    emit(args, {"dataset": args.name, "folder": args.to, "files": list(files)})
    return EXIT_OK


def cmd_train(args: argparse.Namespace) -> int:
    from ownmark.keys import load_key
    from ownmark.models import load_model
    from ownmark.train import check_checkpoint
    from ownmark.workflows import train_model

    # Checked before anything is loaded: a wrong flag must not cost a data set's load time.
    check_checkpoint(args.checkpoint, args.resume)
    if args.checkpoint_every is not None:
        if args.checkpoint is None:
            raise ConfigError("--checkpoint-every needs --checkpoint FILE to write to")
        if args.checkpoint_every < 1:
            raise ConfigError(f"--checkpoint-every must be at least 1, got {args.checkpoint_every}")
    _check_subsets(args)
    embedding = args.command == "embed"
    # Made first: it checks the numbers and resolves --device auto, once, before any loading.
    config = _train_config(args, key_ratio=args.key_ratio if embedding else 0.0)
    key = load_key(args.key) if embedding else None
    init = (
        load_model(args.init, args.allow_factory) if embedding and args.init is not None else None
    )
    data = _load_data(args)
    try:
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
            checkpoint_every=args.checkpoint_every,
            train_subset=args.train_subset,
            test_subset=args.test_subset,
            # Said even with -q: it is the one sign that earlier work is being reused.
            report=lambda line: print(f"ownmark: {line}", file=sys.stderr, flush=True),
        )
    except KeyboardInterrupt:
        if args.checkpoint is None or not args.checkpoint.is_file():
            raise
        # fit closed its progress bar, so this starts on a line of its own.
        print(
            f"ownmark: interrupted; {args.checkpoint} holds the last checkpoint: run the same "
            "command with --resume to continue",
            file=sys.stderr,
        )
        return 130
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
    print(f", {result.epochs} epochs in {result.seconds:.1f} s on {config.device}")
    if json_mode(args):
        import json

        record = json.loads(_metrics_path(args).read_text())
        files = {"model": args.out, "metrics": _metrics_path(args)}
        if key is not None:
            files["key"] = key_out
            record["key_commitment"] = commitment
        emit(args, {"metrics": record, "files": files})
    return EXIT_OK


def _check_subsets(args: argparse.Namespace) -> None:
    """``--train-subset`` / ``--test-subset`` sizes that can never work (before loading data)."""
    for name in ("train_subset", "test_subset"):
        size = getattr(args, name, None)
        if size is not None and size < 1:
            option = "--" + name.replace("_", "-")
            raise ConfigError(f"{option} must be at least 1 image, got {size}")


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
    emit(args, {"model": args.model, "files": {"onnx": path}})
    return EXIT_OK


def cmd_attack(args: argparse.Namespace) -> int:
    from ownmark.fileio import write_json_atomic
    from ownmark.keys import load_key
    from ownmark.models import load_model
    from ownmark.workflows import attack_sweep, check_compatible, run_record, subset_data

    _check_subsets(args)
    params = _parse_params(args.param)
    sweep = parse_sweep(args.sweep) if args.sweep is not None else None
    if sweep is not None and args.out is not None:
        raise ConfigError("--out writes one attacked model; drop --out to sweep (use --metrics)")
    model = load_model(args.model, args.allow_factory)
    key = load_key(args.key) if args.key is not None else None
    data, subsets = subset_data(_load_data(args), test_subset=args.test_subset)
    check_compatible(model, key=key, data=data, suspect=True)
    rows = attack_sweep(
        model,
        args.attack,
        data,
        params=params,
        sweep=sweep,
        key=key,
        out=args.out,
        progress=_progress(args),
        artifacts_dir=args.artifacts,
    )
    for row in rows:
        row["test_subset"] = subsets["test_subset"]
    table = _attack_table(rows)
    print(table)
    files: dict[str, Path] = {}
    if sweep is not None:
        # A sweep is worth keeping: its metrics, table and plot, by default under
        # ownmark-attacks/ (the way verify keeps its evidence under ownmark-evidence/).
        from ownmark.fileio import write_text_atomic
        from ownmark.plots import plot_sweep

        path = args.metrics or Path("ownmark-attacks") / f"{args.attack}-{sweep[0]}-sweep.json"
        write_json_atomic(path, run_record(task="attack sweep", swept=sweep[0], results=rows))
        write_text_atomic(path.with_suffix(".md"), table + "\n")
        plot_sweep(rows, sweep[0], path.with_suffix(".png"))
        print(f"wrote {path}, {path.with_suffix('.md')} and {path.with_suffix('.png')}")
        files = {
            "metrics": path,
            "table": path.with_suffix(".md"),
            "plot": path.with_suffix(".png"),
        }
    elif args.metrics is not None or args.out is not None:
        path = _metrics_path(args)
        write_json_atomic(path, rows[0])
        print(f"wrote {path}" + (f" and {args.out}" if args.out is not None else ""))
        files = {"metrics": path} | ({"model": args.out} if args.out is not None else {})
    emit(
        args,
        {
            "attack": args.attack,
            "model": args.model,
            "swept": sweep[0] if sweep is not None else None,
            "rows": rows,
            "files": files,
        },
    )
    return EXIT_OK


def _attack_table(rows: list[dict[str, Any]]) -> str:
    """Aligned rows: the attack's parameters, then test and watermark accuracy (and a
    defence's refusal rate on normal queries); then what each run found, in short."""
    labels = [", ".join(f"{k}={v}" for k, v in row["attack"].items()) for row in rows]
    width = max(len("attack"), *map(len, labels))
    refusals = any(row.get("refusal_rate") is not None for row in rows)
    header = f"{'attack':{width}s} {'test acc':>9s} {'wm acc':>9s}"
    lines = [header + (f" {'refuses':>9s}" if refusals else "")]
    for label, row in zip(labels, rows, strict=True):
        test, marked = _fmt(row["test_accuracy"]), _fmt(row["watermark_accuracy"])
        line = f"{label:{width}s} {test:>9s} {marked:>9s}"
        lines.append(line + (f" {_fmt(row.get('refusal_rate')):>9s}" if refusals else ""))
    for label, row in zip(labels, rows, strict=True):
        found = _short(row.get("findings") or {})
        if found:
            lines.append(f"{label if len(rows) > 1 else row['attack']['attack']} found: {found}")
    return "\n".join(lines)


def _short(values: dict[str, Any]) -> str:
    """``k=v`` for the scalar and short-list entries of a findings record (the JSON file
    has everything)."""
    parts = []
    for name, value in values.items():
        if isinstance(value, float):
            parts.append(f"{name}={value:.4g}")
        elif isinstance(value, bool | int | str) or (
            isinstance(value, list)
            and len(value) <= 10
            and all(isinstance(v, int | str) for v in value)
        ):
            parts.append(f"{name}={value}")
    return ", ".join(parts)


def cmd_matrix(args: argparse.Namespace) -> int:
    import dataclasses

    from ownmark.executors import make_executor
    from ownmark.matrix import MatrixConfig, crashed_cells, render_matrix, run_matrix

    overrides: dict[str, Any] = {}
    if args.plugins:
        overrides["plugins"] = tuple(m.strip() for m in args.plugins.split(",") if m.strip())
        import_plugins(overrides["plugins"])  # before the config names their schemes
    if args.in_process:
        overrides["served"] = False
    config = MatrixConfig.from_file(args.config) if args.config is not None else MatrixConfig()
    if args.schemes:
        overrides["schemes"] = tuple(s.strip() for s in args.schemes.split(",") if s.strip())
    if args.attacks:
        # Columns are comma-separated; an attack's own parameters use ';' on the command line.
        specs = (a.strip().replace(";", ",") for a in args.attacks.split(","))
        overrides["attacks"] = tuple(s for s in specs if s)
    if args.seeds:
        try:
            overrides["seeds"] = tuple(int(s) for s in args.seeds.split(","))
        except ValueError:
            raise ConfigError(f"--seeds takes integers like 0,1,2, got {args.seeds!r}") from None
    for name in ("epochs", "num_keys", "key_ratio", "arch", "device"):
        if getattr(args, name) is not None:
            overrides[name] = getattr(args, name)
    if args.data != "digits" or args.data_path is not None:
        overrides.update(dataset=args.data, data_path=args.data_path)
    config = dataclasses.replace(config, **overrides)
    executor = make_executor(
        args.executor, workers=args.workers, address=args.address, plugins=config.plugins
    )
    with executor:
        cells = run_matrix(config, args.out, report=_step_printer(args), executor=executor)
    paths = render_matrix(cells, args.out)
    print(paths["markdown"].read_text(), end="")
    print(f"wrote {paths['markdown']}, {paths['json']} and {paths['png']}")
    crashed = crashed_cells(cells)
    if crashed:
        print(
            f"error: {len(crashed)} of {len(cells)} cells crashed (listed above, tracebacks in "
            f"{args.out}/cells/*.error.json); rerun the same command to retry them",
            file=sys.stderr,
        )
    if json_mode(args):
        import json

        summary = json.loads(paths["json"].read_text())["summary"]
        emit(
            args,
            {"summary": summary, "cells": len(cells), "crashed": len(crashed), "files": paths},
        )
    return EXIT_ERROR if crashed else EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    from ownmark.demo import run_demo

    summary = run_demo(
        args.out,
        scheme=args.scheme,
        epochs=args.epochs,
        seed=args.seed,
        progress=_progress(args),
        report=_step_printer(args),
    )
    print(summary.table())
    print(f"wrote {len(summary.files)} files; {args.out}/README.md says what each one is:")
    for file in summary.files:
        print(f"  {file}")
    emit(
        args,
        {
            "config": summary.config,
            "rows": summary.rows,
            "correct": summary.correct,
            "files": summary.files,
        },
    )
    return EXIT_OK if summary.correct else EXIT_NOT_OWNED


def _step_printer(args: argparse.Namespace) -> Any:
    """Step lines on stderr, flushed at once so that a log file shows them as they happen."""
    if args.quiet:
        return lambda line: None
    return lambda line: print(line, file=sys.stderr, flush=True)
