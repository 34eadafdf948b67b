"""Reproduce Zhang et al. 2018's CIFAR-10 tables (seed 001, Table 4 and Table 5's CIFAR-10 row).

For each of the three watermarks (content, unrelated, noise) this trains a watermarked model
of the paper's CIFAR-10 CNN (Table 6/7: conv 64,64,128,128, dense 256,256, SGD lr 0.01, batch
128, 50 epochs, dropout 0.5) and a clean one with the same seed, then reports

- clean test accuracy and watermark accuracy after embedding,
- both after magnitude pruning of 10%..90% of the weights (Table 4),
- both after fine-tuning on the first half of the test set, evaluated on the second (Table 5),
- the clean model's accuracy on each key set (its false-match rate),
- the wall time of embedding vs. clean training,

next to the paper's numbers, and writes ``zhang_cifar10.json`` and ``zhang_cifar10.md``.

The paper's keys (seed 001 and its appendix, Figure 9): "TEST" written on automobile images,
MNIST "1"s, and Gaussian noise on automobile images, all labelled airplane (class 0).

Trained and fine-tuned models are cached (``--cache``), so a rerun with the same settings
reuses them and only measures again. Full configuration (a GPU)::

    python benchmarks/zhang_cifar10.py --data-path ../shared/data/cifar10 \\
        --epochs 50 --train-subset 0 --finetune-epochs 10

Reduced CPU configuration (the defaults)::

    python benchmarks/zhang_cifar10.py --data-path ../shared/data/cifar10
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from ownmark.data import DataSplits, load_dataset, stratified_subset
from zhang_tables import (
    Bench,
    cost_section,
    embedding_section,
    finetune_section,
    footer,
    pruning_section,
    run_seed,
    warm_up,
    write_record,
)

# Seed 001, Table 4 (CIFAR-10): (testing acc., watermark acc.) per pruning rate 10%..90%.
PAPER_PRUNING = {
    "content": (
        (78.37, 78.42, 78.2, 78.24, 78.16, 77.87, 76.7, 74.59, 64.9),
        (99.93, 99.93, 99.93, 99.93, 99.93, 99.86, 99.86, 99.8, 99.47),
    ),
    "unrelated": (
        (78.06, 78.08, 78.05, 77.78, 77.75, 77.44, 76.71, 74.57, 62.15),
        (100, 100, 100, 100, 100, 100, 100, 96.39, 10.93),
    ),
    "noise": (
        (78.45, 78.5, 78.33, 78.31, 78.02, 77.87, 77.01, 73.09, 59.29),
        (99.86, 99.86, 99.93, 99.93, 99.8, 99.6, 98.46, 92.8, 65.13),
    ),
}
# Seed 001, Table 5, CIFAR10 row: (testing acc., watermark acc.) after fine-tuning.
PAPER_FINETUNE = {
    "content": (77.55, 98.33),
    "unrelated": (76.75, 95.33),
    "noise": (78.43, 69.13),
}
# The excerpt of seed 001 quotes no unpruned CIFAR-10 accuracy; Table 4's 10% rows are
# 78.06-78.45% (test) and 99.86-100% (watermark).
PAPER_CLEAN_TEST = "n/a"
PAPER_EMBED_WM = "n/a"
PAPER_FALSE_MATCH = "~10"  # the paper's "clean model on key samples": about chance

#: The paper's public settings: automobile (1) -> airplane (0), "TEST" at the bottom; the
#: unrelated key is MNIST "1"s (the built-in digits) labelled airplane.
PAPER_PARAMS: dict[str, dict[str, Any]] = {
    "content": {"source_class": 1, "target_class": 0, "text": "TEST", "position": "bottom"},
    "unrelated": {"source": "digits", "digit": 1, "target_class": 0},
    "noise": {"source_class": 1, "target_class": 0},
}
#: The key share these paper keys are embedded with (one class, one label), as for MNIST.
PAPER_KEY_RATIO = 0.05
#: Test images whose accuracy is logged per training epoch (not the reported accuracies).
MONITOR_SIZE = 1000
PAPER_TRAIN_SIZE = 50_000


def load(args: argparse.Namespace) -> DataSplits:
    data = load_dataset("cifar10", args.data_path)
    train, test = data.train, data.test
    if args.train_subset and args.train_subset < len(train):
        train = stratified_subset(train, args.train_subset, seed=0)
    if args.test_subset and args.test_subset < len(test):
        test = stratified_subset(test, args.test_subset, seed=0)
    return DataSplits(train=train, test=test)


def bench(args: argparse.Namespace, data: DataSplits) -> Bench:
    return Bench(
        dataset="cifar10",
        key_params=PAPER_PARAMS,
        key_ratio=PAPER_KEY_RATIO,
        epochs=args.epochs,
        finetune_epochs=args.finetune_epochs,
        num_keys=args.num_keys,
        device=args.device,
        progress=not args.quiet,
        cache=args.cache,
        monitor=stratified_subset(data.test, min(MONITOR_SIZE, len(data.test)), seed=0),
    )


def reduced(cfg: dict[str, Any], train_size: int) -> list[str]:
    """What this run reduced against the paper's setting (empty: the full configuration)."""
    changes = []
    if train_size < PAPER_TRAIN_SIZE:
        changes.append(
            f"{train_size:,} of the {PAPER_TRAIN_SIZE:,} training images (stratified subset)"
        )
    if cfg["epochs"] < 50:
        changes.append(f"{cfg['epochs']} training epochs instead of 50")
    if cfg["finetune_epochs"] < 10:
        changes.append(f"{cfg['finetune_epochs']} fine-tuning epochs (ownmark's default: 10)")
    if cfg.get("test_subset"):
        changes.append(f"{cfg['test_subset']:,} of the 10,000 test images")
    if len(cfg["seeds"]) < 3:
        changes.append(f"{len(cfg['seeds'])} seed")
    return changes


def markdown(record: dict[str, Any]) -> str:
    runs = record["results"]["seeds"]
    cfg = record["config"]
    seeds = [r["seed"] for r in runs]
    train_size = record["results"]["train_size"]
    test_size = record["results"]["test_size"]
    half = test_size // 2
    changes = reduced(cfg, train_size)
    if changes:
        banner = (
            "**Reduced CPU configuration: "
            + "; ".join(changes)
            + ". The paper's numbers (in parentheses) come from the full 50,000 training "
            "images and full training (50 epochs), so our accuracies are far lower and the "
            "two columns are not directly comparable; the shape of the curves (how pruning "
            "and fine-tuning move test vs. watermark accuracy) is what can be compared.**"
        )
    else:
        banner = "Full configuration: all 50,000 training images, the paper's epochs."
    cached = [name for r in runs for name, hit in r.get("loaded_from_cache", {}).items() if hit]
    lines = [
        "# Zhang et al. 2018 on CIFAR-10: ours (paper)",
        "",
        banner,
        "",
        f"- command: `{record['command']}`",
        f"- machine: {record['device']}; {record['machine']}; torch {record['torch_version']}",
        f"- date: {record['written']}; total wall time {record['total_seconds']:.0f} s"
        + (
            f" (models loaded from the cache `{cfg['cache']}`: {', '.join(cached)}; their "
            "training seconds are those of the run that trained them)"
            if cached
            else ""
        ),
        f"- data: CIFAR-10 python batches from `{cfg['data_path']}` (JPEG-derived pixels, exact "
        f"labels; see ../shared/data/SOURCES.md), {train_size} training and {test_size} test "
        "images",
        f"- model: zhang_cifar10 (Table 6), SGD lr {cfg['lr']}, momentum {cfg['momentum']}, "
        f"batch {cfg['batch_size']}, {cfg['epochs']} epochs (paper: 50), no augmentation, key "
        f"ratio {cfg['key_ratio']}, {cfg['num_keys']} key samples per scheme; per-epoch "
        f"progress logged on {MONITOR_SIZE} test images, every reported accuracy on the whole "
        "test set (fine-tuning: its second half)",
        '- keys (paper): content = "TEST" on automobile images, unrelated = MNIST "1"s, '
        "noise = Gaussian noise on automobile images, all labelled airplane",
        f"- seeds {seeds}: every cell is our mean [min–max] over the seeds, then (the paper's "
        "number), in %. Each seed retrains every model and draws new keys.",
        "- the paper's excerpt gives no unpruned CIFAR-10 accuracy (n/a); its 10% pruning rows "
        "are 78.06–78.45% test and 99.86–100% watermark accuracy",
        "",
        *embedding_section(runs, PAPER_CLEAN_TEST, PAPER_EMBED_WM, PAPER_FALSE_MATCH),
        "",
        *pruning_section(
            runs, "Table 4: magnitude pruning (global over conv + dense weights)", PAPER_PRUNING
        ),
        "",
        *finetune_section(
            runs,
            f"Table 5, CIFAR-10 row: fine-tuning ({cfg['finetune_epochs']} epochs on "
            f"test[:{half}], evaluated on test[{half}:])",
            PAPER_FINETUNE,
        ),
        "",
        *cost_section(runs),
        "",
        *footer("zhang_cifar10.json"),
        *not_owned(runs),
    ]
    return "\n".join(lines)


def not_owned(runs: list[dict[str, Any]]) -> list[str]:
    """One line naming every verdict other than "owned" (with its watermark accuracy)."""
    cases = []
    for r in runs:
        for scheme, row in r["schemes"].items():
            attacked = [(f"{round(p['rate'] * 100)}% pruning", p) for p in row["pruning"]]
            attacked.append(("fine-tuning", row["finetune"]))
            cases += [
                f"seed {r['seed']} {scheme} after {what}: {a['verdict']} "
                f"(wm {a['watermark_accuracy']}%, p = {a['p_value']:.2g})"
                for what, a in attacked
                if a["verdict"] != "owned"
            ]
    if not cases:
        return []
    return [
        "Not owned: " + "; ".join(cases) + '. "inconclusive" means the binomial test '
        "passed but the verifier's decoy control failed (the attacked model no longer "
        "classifies ordinary images well above chance, or gives the key label to them too), "
        "so ownmark makes no claim.",
        "",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data-path",
        required=True,
        type=Path,
        help="CIFAR-10 python version: folder of the batches or the .tar.gz",
    )
    parser.add_argument(
        "--epochs", type=int, default=4, help="default 4 (reduced CPU configuration; paper: 50)"
    )
    parser.add_argument(
        "--finetune-epochs", type=int, default=3, help="default 3 (reduced; ownmark's: 10)"
    )
    parser.add_argument("--num-keys", type=int, default=100)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="default: 0")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--train-subset",
        type=int,
        default=10_000,
        help="train on a stratified subset of N images (default 10000; 0: all 50,000)",
    )
    parser.add_argument(
        "--test-subset",
        type=int,
        default=0,
        help="measure on a stratified subset of N test images (default 0: all 10,000; for "
        "smoke tests)",
    )
    parser.add_argument(
        "--cache",
        type=Path,
        default=Path(tempfile.gettempdir()) / "ownmark-zhang-cifar10-cache",
        help="folder of trained models reused by a rerun (default: under the temp folder)",
    )
    parser.add_argument("--out-dir", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args()
    started = time.perf_counter()
    data = load(args)
    warm_up(data, args.device)
    settings = bench(args, data)
    results = {
        "train_size": len(data.train),
        "test_size": len(data.test),
        "seeds": [run_seed(data, seed, settings) for seed in args.seeds],
    }
    write_record(
        task="benchmark zhang_cifar10",
        args=args,
        extra_config={
            "key_ratio": PAPER_KEY_RATIO,
            "key_params": PAPER_PARAMS,
            "monitor_size": MONITOR_SIZE,
        },
        results=results,
        started=started,
        stem="zhang_cifar10",
        render=markdown,
    )


if __name__ == "__main__":
    main()
