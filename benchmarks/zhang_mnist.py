"""Reproduce Zhang et al. 2018's MNIST tables (seed 001, Tables 3 and 5) on the full MNIST.

For each of the three watermarks (content, unrelated, noise) this trains a watermarked model
of the paper's MNIST CNN (Table 6/7) from scratch, then reports

- clean test accuracy and watermark accuracy after embedding,
- both after magnitude pruning of 10%..90% of the weights (Table 3),
- both after fine-tuning on the first half of the test set, evaluated on the second (Table 5),
- the clean model's accuracy on each key set (its false-match rate),
- the wall time of embedding vs. clean training of the same model for the same epochs,

next to the paper's numbers, and writes ``zhang_mnist.json`` and ``zhang_mnist.md``.

Usage::

    python benchmarks/zhang_mnist.py --data-path ../shared/data/mnist [--device cuda]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from ownmark.attacks import AttackData, FineTuning, MagnitudePruning
from ownmark.data import DataSplits, load_dataset
from ownmark.fileio import write_json_atomic, write_text_atomic
from ownmark.metrics import accuracy
from ownmark.train import TrainConfig
from ownmark.verify import LocalModelSuspect, verify_ownership
from ownmark.workflows import make_key, run_record, train_model

SCHEMES = ("content", "unrelated", "noise")
RATES = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)

# Seed 001, Table 3 (MNIST): (testing acc., watermark acc.) per pruning rate 10%..90%.
PAPER_PRUNING = {
    "content": (
        (99.44, 99.45, 99.43, 99.4, 99.29, 99.27, 99.18, 98.92, 97.03),
        (100, 100, 100, 100, 100, 100, 100, 100, 99.95),
    ),
    "unrelated": (
        (99.43, 99.45, 99.41, 99.31, 99.19, 99.24, 98.82, 97.79, 93.55),
        (100, 100, 100, 100, 100, 100, 100, 100, 99.9),
    ),
    "noise": (
        (99.4, 99.41, 99.41, 99.42, 99.41, 99.3, 99.22, 99.04, 95.19),
        (100, 100, 100, 100, 100, 99.9, 99.9, 99.9, 99.55),
    ),
}
# Seed 001, Table 5, MNIST row: (testing acc., watermark acc.) after fine-tuning.
PAPER_FINETUNE = {"content": (99.6, 99.95), "unrelated": (99.64, 100.0), "noise": (99.68, 99.85)}
PAPER_CLEAN_TEST = 99.45  # clean test accuracy quoted for the paper's MNIST model
PAPER_EMBED_WM = 100.0
PAPER_FALSE_MATCH = "~10"  # the paper's "clean model on key samples": about chance


def pct(value: float | None) -> float | None:
    return None if value is None else round(100 * value, 2)


def load(args: argparse.Namespace) -> DataSplits:
    data = load_dataset("mnist", args.data_path)
    if args.train_subset:
        subset = data.train.subset(range(args.train_subset), "mnist/train-subset")
        data = DataSplits(train=subset, test=data.test)
    return data


def warm_up(data: DataSplits, device: str) -> None:
    """One short run so the first timed run does not pay for kernel selection and caches."""
    small = DataSplits(
        train=data.train.subset(range(min(2048, len(data.train)))),
        test=data.test.subset(range(256)),
    )
    train_model(small, TrainConfig(epochs=1, device=device), progress=False)


#: The paper's public settings (seed 001): digit 1 -> 0, "TEST" at the bottom. ownmark's own
#: defaults are secret multi-class keys; this benchmark reproduces the paper's tables.
PAPER_PARAMS: dict[str, dict[str, Any]] = {
    "content": {"source_class": 1, "target_class": 0, "text": "TEST", "position": "bottom"},
    "unrelated": {"target_class": 0},
    "noise": {"source_class": 1, "target_class": 0},
}
#: The key share these paper keys were embedded with (one class, one label).
PAPER_KEY_RATIO = 0.05


def run_seed(data: DataSplits, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    """Clean model, then each scheme embedded, pruned and fine-tuned, all with ``seed``."""
    config = TrainConfig(
        epochs=args.epochs, seed=seed, device=args.device, key_ratio=PAPER_KEY_RATIO
    )
    progress = not args.quiet
    clean, clean_result = train_model(data, config, progress=progress)
    clean.cpu()
    result: dict[str, Any] = {
        "seed": seed,
        "clean": {
            "test_accuracy": pct(clean_result.test_accuracy),
            "seconds": round(clean_result.seconds, 2),
            "history": clean_result.history,
        },
        "schemes": {},
    }
    first, second = data.test.halves()
    for scheme in SCHEMES:
        key = make_key(
            data, scheme, seed=seed, dataset="mnist", num_keys=args.num_keys, **PAPER_PARAMS[scheme]
        )
        # Same initialisation seed as the clean model: the two runs differ only by the key.
        marked, embedded = train_model(data, config, key=key, progress=progress)
        row: dict[str, Any] = {
            "key_commitment": key.commitment,
            "num_keys": len(key),
            "clean_model_on_key": pct(accuracy(clean, key.images, key.labels)),
            "test_accuracy": pct(embedded.test_accuracy),
            "watermark_accuracy": pct(embedded.watermark_accuracy),
            "seconds": round(embedded.seconds, 2),
            "time_ratio_vs_clean": round(embedded.seconds / clean_result.seconds, 3),
            "pruning": [],
        }
        for rate in RATES:
            pruned = MagnitudePruning(rate=rate)(marked)
            verdict = verify_ownership(key, LocalModelSuspect(pruned), sequential=False)
            row["pruning"].append(
                {
                    "rate": rate,
                    "test_accuracy": pct(accuracy(pruned, data.test.images, data.test.labels)),
                    "watermark_accuracy": pct(accuracy(pruned, key.images, key.labels)),
                    "verdict": verdict.verdict.value,
                    "p_value": verdict.p_value,
                }
            )
        tuner = FineTuning(
            epochs=args.finetune_epochs, seed=seed, device=args.device, progress=progress
        )
        tuned = tuner(marked, AttackData(train=first, test=second)).cpu()
        verdict = verify_ownership(key, LocalModelSuspect(tuned), sequential=False)
        row["finetune"] = {
            "epochs": args.finetune_epochs,
            "test_accuracy": pct(accuracy(tuned, second.images, second.labels)),
            "watermark_accuracy": pct(accuracy(tuned, key.images, key.labels)),
            "verdict": verdict.verdict.value,
            "p_value": verdict.p_value,
        }
        result["schemes"][scheme] = row
        print(
            f"seed {seed} {scheme}: test {row['test_accuracy']}%, wm "
            f"{row['watermark_accuracy']}%, 90% pruning wm "
            f"{row['pruning'][-1]['watermark_accuracy']}%, fine-tuned wm "
            f"{row['finetune']['watermark_accuracy']}%, time ratio {row['time_ratio_vs_clean']}",
            file=sys.stderr,
        )
    return result


def cell(values: list[float], paper: float | str) -> str:
    """``mean [min-max] (paper)`` over seeds; just ``value (paper)`` for one seed."""
    mean = statistics.fmean(values)
    spread = f" [{min(values):.2f}–{max(values):.2f}]" if len(values) > 1 else ""
    return f"{mean:.2f}{spread} ({paper})"


def first_epoch_at(history: list[dict[str, float]], target: float) -> int | str:
    """The first epoch whose test accuracy reached ``target``, or "never"."""
    for entry in history:
        if entry.get("test_accuracy", 0.0) >= target:
            return int(entry["epoch"])
    return "never"


def markdown(record: dict[str, Any]) -> str:
    runs = record["results"]["seeds"]
    cfg = record["config"]
    seeds = [r["seed"] for r in runs]

    def values(get: Any) -> list[float]:
        return [get(r) for r in runs]

    def scheme_values(scheme: str, get: Any) -> list[float]:
        return [get(r["schemes"][scheme]) for r in runs]

    reached = [first_epoch_at(r["clean"]["history"], 0.993) for r in runs]
    lines = [
        "# Zhang et al. 2018 on full MNIST: ours (paper)",
        "",
        f"- command: `{record['command']}`",
        f"- machine: {record['device']}; {record['machine']}; torch {record['torch_version']}",
        f"- date: {record['written']}; total {record['total_seconds']:.0f} s",
        f"- data: MNIST IDX files from `{cfg['data_path']}`, {record['results']['train_size']} "
        f"training and {record['results']['test_size']} test images",
        f"- model: zhang_mnist (Table 6), SGD lr {cfg['lr']}, momentum {cfg['momentum']}, batch "
        f"{cfg['batch_size']}, {cfg['epochs']} epochs (paper: 50), key ratio {cfg['key_ratio']}, "
        f"{cfg['num_keys']} key samples per scheme",
        f"- seeds {seeds}: every cell is our mean [min–max] over the seeds, then (the paper's "
        "number), in %. Each seed retrains every model and draws new keys.",
        f"- clean test accuracy first reached 99.3% at epoch {reached} (per seed)",
        "",
        "## After embedding",
        "",
        "| model | test acc. | watermark acc. | clean model on key set (false matches) |",
        "| --- | ---: | ---: | ---: |",
        "| clean | "
        + cell(values(lambda r: r["clean"]["test_accuracy"]), PAPER_CLEAN_TEST)
        + " | - | - |",
    ]
    for scheme in SCHEMES:
        lines.append(
            f"| {scheme} | "
            f"{cell(scheme_values(scheme, lambda s: s['test_accuracy']), PAPER_CLEAN_TEST)} | "
            f"{cell(scheme_values(scheme, lambda s: s['watermark_accuracy']), PAPER_EMBED_WM)} | "
            f"{cell(scheme_values(scheme, lambda s: s['clean_model_on_key']), PAPER_FALSE_MATCH)} |"
        )
    lines += [
        "",
        "## Table 3: magnitude pruning (global over conv + dense weights)",
        "",
        "| pruning | " + " | ".join(f"{s} test | {s} wm" for s in SCHEMES) + " | owned |",
        "| --- |" + " ---: | ---: |" * len(SCHEMES) + " ---: |",
    ]
    for i, rate in enumerate(RATES):
        cells = []
        owned = 0
        for scheme in SCHEMES:
            paper_test, paper_wm = PAPER_PRUNING[scheme]
            prunes = scheme_values(scheme, lambda s, i=i: s["pruning"][i])
            cells.append(cell([p["test_accuracy"] for p in prunes], paper_test[i]))
            cells.append(cell([p["watermark_accuracy"] for p in prunes], paper_wm[i]))
            owned += sum(p["verdict"] == "owned" for p in prunes)
        total = len(SCHEMES) * len(runs)
        lines.append(f"| {round(rate * 100)}% | " + " | ".join(cells) + f" | {owned}/{total} |")
    lines += [
        "",
        f"## Table 5: fine-tuning ({cfg['finetune_epochs']} epochs on test[:5000], "
        "evaluated on test[5000:])",
        "",
        "| scheme | test acc. | watermark acc. | owned |",
        "| --- | ---: | ---: | ---: |",
    ]
    for scheme in SCHEMES:
        tuned = scheme_values(scheme, lambda s: s["finetune"])
        paper_test, paper_wm = PAPER_FINETUNE[scheme]
        owned = sum(t["verdict"] == "owned" for t in tuned)
        lines.append(
            f"| {scheme} | {cell([t['test_accuracy'] for t in tuned], paper_test)} | "
            f"{cell([t['watermark_accuracy'] for t in tuned], paper_wm)} | {owned}/{len(tuned)} |"
        )
    lines += [
        "",
        "## Cost of embedding (same model, same epochs, same seed, measured in the same run)",
        "",
        "| run | wall time (s) | ratio to clean |",
        "| --- | ---: | ---: |",
        f"| clean training | {cell(values(lambda r: r['clean']['seconds']), '-')} | 1 |",
    ]
    for scheme in SCHEMES:
        lines.append(
            f"| embed {scheme} | {cell(scheme_values(scheme, lambda s: s['seconds']), '-')} | "
            f"{cell(scheme_values(scheme, lambda s: s['time_ratio_vs_clean']), '≤ 1.10 target')} |"
        )
    lines += [
        "",
        '"owned": exact binomial test on the 100 key queries, p0 = 0.5 (uncalibrated), '
        "alpha = 1e-6, i.e. at least 74 matches. Per-seed numbers and p-values: "
        "`zhang_mnist.json`.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data-path", required=True, type=Path, help="folder of the MNIST IDX files"
    )
    parser.add_argument("--epochs", type=int, default=50, help="default 50 (Table 7)")
    parser.add_argument("--finetune-epochs", type=int, default=10)
    parser.add_argument("--num-keys", type=int, default=100)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="default: 0")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--train-subset",
        type=int,
        default=0,
        help="use only the first N training images (reduced CPU configuration)",
    )
    parser.add_argument("--out-dir", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args()
    started = time.perf_counter()
    data = load(args)
    warm_up(data, args.device)
    results = {
        "train_size": len(data.train),
        "test_size": len(data.test),
        "seeds": [run_seed(data, seed, args) for seed in args.seeds],
    }
    device = (
        torch.cuda.get_device_name(0)
        if args.device.startswith("cuda")
        else f"CPU ({torch.get_num_threads()} threads)"
    )
    record = run_record(
        task="benchmark zhang_mnist",
        command="python " + " ".join(shlex.quote(a) for a in sys.argv),
        device=device,
        config={
            **{k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            # The training defaults this benchmark runs with (TrainConfig's, i.e. Table 7).
            **{
                name: value
                for name, value in dataclasses.asdict(TrainConfig()).items()
                if name in ("lr", "momentum", "batch_size", "weight_decay")
            },
            "key_ratio": PAPER_KEY_RATIO,
            "key_params": PAPER_PARAMS,
        },
        results=results,
        total_seconds=round(time.perf_counter() - started, 1),
        python=platform.python_version(),
    )
    args.out_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.out_dir / "zhang_mnist.json", record)
    write_text_atomic(args.out_dir / "zhang_mnist.md", markdown(record))
    print(markdown(record))
    print(json.dumps({"total_seconds": record["total_seconds"]}))


if __name__ == "__main__":
    main()
