"""What the triplet term of UDH's embedding buys (seed 004), at several residual bounds.

For each bound on the residual (``--bounds``, grey levels), one key is made and two hosts are
trained with it, the same seed and data: with the triplet term (weight 0.5, margin 0.2, the
defaults) and without it (weight 0). Reported for each: clean test accuracy, trigger accuracy
on the key and on fresh triggers (test images the host never saw), and how often clean test
images of the source classes get the target label (the false-trigger rate), next to the
triggers' PSNR.

Usage::

    python benchmarks/udh_triplet.py --data-path ../shared/data/mnist --epochs 2 --bounds 2,4
"""

from __future__ import annotations

import argparse
import dataclasses
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from common import benchmark_record, cached_key, cached_model, fresh_key, log, pct
from ownmark.attacks import create_attack
from ownmark.data import DataSplits, load_dataset
from ownmark.fileio import write_json_atomic, write_text_atomic
from ownmark.keys import KeySet
from ownmark.metrics import accuracy
from ownmark.models import Classifier
from ownmark.schemes import create_scheme, key_label_lookup
from ownmark.similarity import psnr
from ownmark.train import TrainConfig
from ownmark.workflows import (
    attack_model,
    attacker_data,
    default_arch,
    subset_data,
    train_model,
)


def rows(
    key: KeySet, model: Classifier, data: DataSplits, args: argparse.Namespace
) -> dict[str, Any]:
    fresh = fresh_key(key, data, args.fresh)
    lookup = key_label_lookup(key)
    target = lookup[data.test.labels]
    carries = target >= 0
    out: dict[str, Any] = {
        "test": pct(accuracy(model, data.test.images, data.test.labels)),
        "key": pct(accuracy(model, key.images, key.labels)),
        "fresh": pct(accuracy(model, fresh.images, fresh.labels)),
        "clean_as_target": pct(
            accuracy(model, data.test.images[carries], target[carries].clamp(min=0))
        ),
    }
    # Robustness is only worth measuring where the host learnt the residual.
    if args.finetune_epochs and out["fresh"] >= 50:
        attack = create_attack(
            "finetune", progress=False, seed=args.seed, epochs=args.finetune_epochs
        )
        _, metrics = attack_model(model, attack, data=attacker_data(attack, data, model), key=fresh)
        out["fresh_after_finetune"] = pct(metrics["watermark_accuracy"])
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    data, subsets = subset_data(
        load_dataset(args.dataset, args.data_path), train_subset=args.train_subset
    )
    arch = args.arch or default_arch(data)
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    config = TrainConfig(epochs=args.epochs, seed=args.seed, augment=args.dataset != "mnist")
    results: dict[str, Any] = {"subsets": subsets, "arch": arch, "bounds": {}}
    for bound in args.bounds:
        key = cached_key(
            cache / f"key-b{bound:g}-s{args.seed}.safetensors",
            lambda b=bound: create_scheme("udh", num_keys=100, max_residual=b).generate(
                data, seed=args.seed
            ),
        )
        row: dict[str, Any] = {"psnr": round(float(psnr(key.images, key.originals).mean()), 2)}
        for name, weight in (("with triplet", 0.5), ("without triplet", 0.0)):
            variant = dataclasses.replace(key, params={**key.params, "triplet_weight": weight})
            model = cached_model(
                cache / f"host-b{bound:g}-w{weight:g}-s{args.seed}.safetensors",
                lambda v=variant: train_model(data, config, arch=arch, key=v, progress=False)[0],
            )
            row[name] = rows(key, model, data, args)
            log(f"bound {bound:g}, {name}: {row[name]}")
        results["bounds"][f"{bound:g}"] = row
    return results


def markdown(record: dict[str, Any]) -> str:
    cfg, res = record["config"], record["results"]
    lines = [
        f"# UDH: what the triplet term buys ({cfg['dataset']}, seed 004; run seed {cfg['seed']})",
        "",
        f"**{res['arch']} trained {cfg['epochs']} epochs, one seed, "
        f"{record['machine_info'].split(';')[0]}.**",
        "",
        f"- command: `{record['command']}`",
        f"- machine: {record['machine_info']}",
        f"- date: {record['date']}; wall time {record['seconds']:.0f} s",
        "- triplet term: weight 0.5, margin 0.2 on L2-normalised penultimate features; the "
        "same key, seed and data with and without it; fine-tuning (on the attacker's share of "
        "the training data) only where the host learnt the triggers (fresh >= 50%)",
        "",
        "| residual bound (grey levels) | PSNR (dB) | triplet term | test acc. | key acc. | "
        f"fresh triggers | clean images -> target | fresh triggers after fine-tuning "
        f"{cfg['finetune_epochs']} epochs |",
        "| ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for bound, row in sorted(res["bounds"].items(), key=lambda item: float(item[0])):
        for name in ("with triplet", "without triplet"):
            r = row[name]
            lines.append(
                f"| {bound} | {row['psnr']} | {name.split()[0]} | {r['test']} | {r['key']} | "
                f"{r['fresh']} | {r['clean_as_target']} | {r.get('fresh_after_finetune', '-')} |"
            )
    degenerate = [b for b, row in res["bounds"].items() if row["psnr"] == float("inf")]
    if degenerate:
        lines += [
            "",
            f"Bound {', '.join(degenerate)}: the residual rounded to no change (PSNR inf), so "
            "the key images equal their covers and the host can only memorise them; keygen "
            "now refuses such a key.",
        ]
    lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", default="mnist")
    parser.add_argument("--data-path", default=None, help="not for the built-in digits")
    parser.add_argument("--arch", default=None, help="host network (default: the paper CNN)")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--bounds", default="2,4", help="residual bounds, grey levels")
    parser.add_argument("--train-subset", type=int, default=None)
    parser.add_argument("--fresh", type=int, default=1000)
    parser.add_argument(
        "--finetune-epochs",
        type=int,
        default=3,
        help="fine-tune the hosts that learnt the triggers (0: skip)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache", default=None, help="default /tmp/ownmark-udh-triplet/<dataset>")
    parser.add_argument("--out-dir", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--name", default=None, help="result file name (default udh_triplet)")
    args = parser.parse_args()
    try:
        args.bounds = [float(b) for b in args.bounds.split(",")]
    except ValueError:
        parser.error(f"--bounds: give numbers separated by commas, got {args.bounds!r}")
    args.cache = args.cache or f"/tmp/ownmark-udh-triplet/{args.dataset}"
    started = datetime.now(timezone.utc)
    results = run(args)
    record = benchmark_record("udh triplet ablation", args, started, results)
    name = args.name or (
        "udh_triplet" if args.dataset == "mnist" else f"udh_triplet_{args.dataset}"
    )
    write_json_atomic(args.out_dir / f"{name}.json", record)
    write_text_atomic(args.out_dir / f"{name}.md", markdown(record))
    log(f"wrote {args.out_dir / name}.md")


if __name__ == "__main__":
    main()
