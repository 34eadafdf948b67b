"""Dataset-independent parts of the Zhang et al. 2018 table benchmarks (seed 001).

Used by ``zhang_mnist.py`` (Tables 3 and 5, MNIST) and ``zhang_cifar10.py`` (Tables 4 and 5,
CIFAR-10): training a clean and three watermarked models per seed (optionally cached on disk so
that a rerun resumes), the 10%..90% magnitude-pruning sweep, fine-tuning on the first half of
the test set (evaluated on the second), ownership verification, the "ours (paper)" markdown
tables and the machine/command record. Each script keeps only its data loading, the paper's
numbers and the header of its report.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from ownmark.attacks import AttackData, FineTuning, MagnitudePruning
from ownmark.data import DataSplits, ImageDataset
from ownmark.fileio import write_json_atomic, write_text_atomic
from ownmark.keys import KeySet
from ownmark.metrics import accuracy
from ownmark.models import Classifier, load_model, save_model
from ownmark.train import TrainConfig
from ownmark.verify import LocalModelSuspect, verify_ownership
from ownmark.workflows import make_key, run_record, train_model

SCHEMES = ("content", "unrelated", "noise")
RATES = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)

#: Paper numbers per scheme: ((testing acc. per rate), (watermark acc. per rate)).
PaperPruning = Mapping[str, tuple[Sequence[float], Sequence[float]]]
#: Paper numbers per scheme: (testing acc., watermark acc.) after fine-tuning.
PaperFinetune = Mapping[str, tuple[float, float]]


def pct(value: float | None) -> float | None:
    return None if value is None else round(100 * value, 2)


def warm_up(data: DataSplits, device: str) -> None:
    """One short run so the first timed run does not pay for kernel selection and caches."""
    small = DataSplits(
        train=data.train.subset(range(min(2048, len(data.train)))),
        test=data.test.subset(range(256)),
    )
    train_model(small, TrainConfig(epochs=1, device=device), progress=False)


@dataclasses.dataclass(frozen=True)
class Bench:
    """How one benchmark trains, attacks and verifies (one data set, every seed).

    Attributes:
        dataset: data set name recorded in the keys (``mnist``, ``cifar10``).
        key_params: the paper's key parameters per scheme.
        key_ratio: share of key samples per epoch when embedding.
        epochs: training epochs of every model.
        finetune_epochs: epochs of the fine-tuning attack.
        num_keys: key samples per scheme.
        device: torch device for training and fine-tuning (evaluation runs on the CPU).
        progress: progress bars on stderr.
        cache: folder of trained and fine-tuned models; a rerun with the same settings loads
            them instead of training again (None: no cache, train every time).
        monitor: test images for the per-epoch history (None: the whole test set). The
            reported accuracies are always measured on the whole test set (fine-tuning: its
            second half); a small monitor set saves an evaluation of the whole set per epoch.
    """

    dataset: str
    key_params: Mapping[str, Mapping[str, Any]]
    key_ratio: float
    epochs: int
    finetune_epochs: int
    num_keys: int
    device: str
    progress: bool = True
    cache: Path | None = None
    monitor: ImageDataset | None = None


def _digest(*parts: Any) -> str:
    """Short hash of JSON-able parts and tensors (the identity of a cached model)."""
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, torch.Tensor):
            h.update(part.detach().cpu().contiguous().numpy().tobytes())
        else:
            h.update(json.dumps(part, sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


def _cache_paths(bench: Bench, stem: str) -> tuple[Path, Path] | None:
    if bench.cache is None:
        return None
    return bench.cache / f"{stem}.safetensors", bench.cache / f"{stem}.json"


def _load_cached(paths: tuple[Path, Path] | None) -> tuple[Classifier, dict[str, Any]] | None:
    if paths is None or not (paths[0].exists() and paths[1].exists()):
        return None
    model = load_model(paths[0])
    info = json.loads(paths[1].read_text())
    print(f"cache: reusing {paths[0]}", file=sys.stderr)
    return model, {**info, "cached": True}


def _store(paths: tuple[Path, Path] | None, model: Classifier, info: dict[str, Any]) -> None:
    if paths is None:
        return
    save_model(model, paths[0])
    write_json_atomic(paths[1], info)


def train_cached(
    data: DataSplits,
    config: TrainConfig,
    bench: Bench,
    label: str,
    key: KeySet | None = None,
) -> tuple[Classifier, dict[str, Any]]:
    """Train (``key=None``: clean) or embed ``key``; load it from the cache when there.

    Returns the model on the CPU and ``test_accuracy``, ``watermark_accuracy`` (fractions),
    ``seconds`` (training time of the run that made the model), ``history`` and ``cached``.
    """
    identity = _digest(
        label,
        data.train.name,
        len(data.train),
        data.train.labels,
        data.train.images[:: max(1, len(data.train) // 256)],
        dataclasses.asdict(config),
        None if key is None else key.images,
        None if key is None else key.labels,
    )
    paths = _cache_paths(bench, f"{bench.dataset}-{label}-seed{config.seed}-{identity}")
    cached = _load_cached(paths)
    if cached is not None:
        return cached
    train_data = data if bench.monitor is None else DataSplits(data.train, bench.monitor)
    model, result = train_model(train_data, config, key=key, progress=bench.progress)
    model.cpu()
    test_accuracy = (
        result.test_accuracy
        if bench.monitor is None
        else accuracy(model, data.test.images, data.test.labels)
    )
    info = {
        "test_accuracy": test_accuracy,
        "watermark_accuracy": result.watermark_accuracy,
        "seconds": result.seconds,
        "history": result.history,
    }
    _store(paths, model, info)
    return model, {**info, "cached": False}


def pruning_sweep(model: Classifier, key: KeySet, test: ImageDataset) -> list[dict[str, Any]]:
    """Magnitude pruning of 10%..90% of the weights: accuracies and verdict at each rate."""
    rows = []
    for rate in RATES:
        pruned = MagnitudePruning(rate=rate)(model)
        verdict = verify_ownership(key, LocalModelSuspect(pruned), sequential=False)
        rows.append(
            {
                "rate": rate,
                "test_accuracy": pct(accuracy(pruned, test.images, test.labels)),
                "watermark_accuracy": pct(accuracy(pruned, key.images, key.labels)),
                "verdict": verdict.verdict.value,
                "p_value": verdict.p_value,
            }
        )
    return rows


def finetune(
    model: Classifier,
    key: KeySet,
    test: ImageDataset,
    seed: int,
    bench: Bench,
    label: str,
) -> dict[str, Any]:
    """Fine-tune on ``test``'s first half, measure on its second half, verify (Table 5)."""
    first, second = test.halves()
    identity = _digest(
        label,
        bench.finetune_epochs,
        seed,
        first.labels,
        [p.detach().flatten()[:64].tolist() for p in model.parameters()],
    )
    paths = _cache_paths(bench, f"{bench.dataset}-{label}-finetuned-seed{seed}-{identity}")
    cached = _load_cached(paths)
    if cached is not None:
        tuned = cached[0]
    else:
        tuner = FineTuning(
            epochs=bench.finetune_epochs, seed=seed, device=bench.device, progress=bench.progress
        )
        monitor = second if bench.monitor is None else bench.monitor
        tuned = tuner(model, AttackData(train=first, test=monitor)).cpu()
        _store(paths, tuned, {"epochs": bench.finetune_epochs, "seed": seed})
    verdict = verify_ownership(key, LocalModelSuspect(tuned), sequential=False)
    return {
        "epochs": bench.finetune_epochs,
        "test_accuracy": pct(accuracy(tuned, second.images, second.labels)),
        "watermark_accuracy": pct(accuracy(tuned, key.images, key.labels)),
        "verdict": verdict.verdict.value,
        "p_value": verdict.p_value,
    }


def run_seed(data: DataSplits, seed: int, bench: Bench) -> dict[str, Any]:
    """Clean model, then each scheme embedded, pruned and fine-tuned, all with ``seed``."""
    config = TrainConfig(
        epochs=bench.epochs, seed=seed, device=bench.device, key_ratio=bench.key_ratio
    )
    clean, clean_result = train_cached(data, config, bench, "clean")
    result: dict[str, Any] = {
        "seed": seed,
        "clean": {
            "test_accuracy": pct(clean_result["test_accuracy"]),
            "seconds": round(clean_result["seconds"], 2),
            "history": clean_result["history"],
        },
        "schemes": {},
    }
    cached = {"clean": clean_result["cached"]}
    for scheme in SCHEMES:
        key = make_key(
            data,
            scheme,
            seed=seed,
            dataset=bench.dataset,
            num_keys=bench.num_keys,
            **bench.key_params[scheme],
        )
        # Same initialisation seed as the clean model: the two runs differ only by the key.
        marked, embedded = train_cached(data, config, bench, scheme, key=key)
        cached[scheme] = embedded["cached"]
        row: dict[str, Any] = {
            "key_commitment": key.commitment,
            "num_keys": len(key),
            "clean_model_on_key": pct(accuracy(clean, key.images, key.labels)),
            "test_accuracy": pct(embedded["test_accuracy"]),
            "watermark_accuracy": pct(embedded["watermark_accuracy"]),
            "seconds": round(embedded["seconds"], 2),
            "time_ratio_vs_clean": round(embedded["seconds"] / clean_result["seconds"], 3),
            "pruning": pruning_sweep(marked, key, data.test),
        }
        row["finetune"] = finetune(marked, key, data.test, seed, bench, scheme)
        result["schemes"][scheme] = row
        print(
            f"seed {seed} {scheme}: test {row['test_accuracy']}%, wm "
            f"{row['watermark_accuracy']}%, 90% pruning wm "
            f"{row['pruning'][-1]['watermark_accuracy']}%, fine-tuned wm "
            f"{row['finetune']['watermark_accuracy']}%, time ratio {row['time_ratio_vs_clean']}",
            file=sys.stderr,
        )
    if bench.cache is not None:
        result["loaded_from_cache"] = cached
    return result


# --- markdown -------------------------------------------------------------------------------


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


def _values(runs: list[dict[str, Any]], get: Callable[[Any], float]) -> list[float]:
    return [get(r) for r in runs]


def _scheme_values(runs: list[dict[str, Any]], scheme: str, get: Callable[[Any], Any]) -> list[Any]:
    return [get(r["schemes"][scheme]) for r in runs]


def embedding_section(
    runs: list[dict[str, Any]],
    paper_test: float | str,
    paper_wm: float | str,
    paper_false_match: float | str,
) -> list[str]:
    """ "## After embedding": clean and watermarked test/watermark accuracy, false matches."""
    lines = [
        "## After embedding",
        "",
        "| model | test acc. | watermark acc. | clean model on key set (false matches) |",
        "| --- | ---: | ---: | ---: |",
        "| clean | "
        + cell(_values(runs, lambda r: r["clean"]["test_accuracy"]), paper_test)
        + " | - | - |",
    ]
    for scheme in SCHEMES:

        def get(field: str, scheme: str = scheme) -> list[float]:
            return _scheme_values(runs, scheme, lambda s: s[field])

        lines.append(
            f"| {scheme} | "
            f"{cell(get('test_accuracy'), paper_test)} | "
            f"{cell(get('watermark_accuracy'), paper_wm)} | "
            f"{cell(get('clean_model_on_key'), paper_false_match)} |"
        )
    return lines


def pruning_section(runs: list[dict[str, Any]], title: str, paper: PaperPruning) -> list[str]:
    """The pruning table: every scheme's test and watermark accuracy per rate, owned count."""
    lines = [
        f"## {title}",
        "",
        "| pruning | " + " | ".join(f"{s} test | {s} wm" for s in SCHEMES) + " | owned |",
        "| --- |" + " ---: | ---: |" * len(SCHEMES) + " ---: |",
    ]
    for i, rate in enumerate(RATES):
        cells = []
        owned = 0
        for scheme in SCHEMES:
            paper_test, paper_wm = paper[scheme]
            prunes = _scheme_values(runs, scheme, lambda s, i=i: s["pruning"][i])
            cells.append(cell([p["test_accuracy"] for p in prunes], paper_test[i]))
            cells.append(cell([p["watermark_accuracy"] for p in prunes], paper_wm[i]))
            owned += sum(p["verdict"] == "owned" for p in prunes)
        total = len(SCHEMES) * len(runs)
        lines.append(f"| {round(rate * 100)}% | " + " | ".join(cells) + f" | {owned}/{total} |")
    return lines


def finetune_section(runs: list[dict[str, Any]], title: str, paper: PaperFinetune) -> list[str]:
    """The fine-tuning table: test and watermark accuracy per scheme, owned count."""
    lines = [
        f"## {title}",
        "",
        "| scheme | test acc. | watermark acc. | owned |",
        "| --- | ---: | ---: | ---: |",
    ]
    for scheme in SCHEMES:
        tuned = _scheme_values(runs, scheme, lambda s: s["finetune"])
        paper_test, paper_wm = paper[scheme]
        owned = sum(t["verdict"] == "owned" for t in tuned)
        lines.append(
            f"| {scheme} | {cell([t['test_accuracy'] for t in tuned], paper_test)} | "
            f"{cell([t['watermark_accuracy'] for t in tuned], paper_wm)} | {owned}/{len(tuned)} |"
        )
    return lines


def cost_section(runs: list[dict[str, Any]]) -> list[str]:
    """Wall time of embedding vs. clean training."""
    lines = [
        "## Cost of embedding (same model, same epochs, same seed, measured in the same run)",
        "",
        "| run | wall time (s) | ratio to clean |",
        "| --- | ---: | ---: |",
        f"| clean training | {cell(_values(runs, lambda r: r['clean']['seconds']), '-')} | 1 |",
    ]
    for scheme in SCHEMES:
        seconds = _scheme_values(runs, scheme, lambda s: s["seconds"])
        ratios = _scheme_values(runs, scheme, lambda s: s["time_ratio_vs_clean"])
        lines.append(f"| embed {scheme} | {cell(seconds, '-')} | {cell(ratios, '≤ 1.10 target')} |")
    return lines


def footer(json_name: str) -> list[str]:
    return [
        '"owned": exact binomial test on the 100 key queries, p0 = 0.5 (uncalibrated), '
        "alpha = 1e-6, i.e. at least 74 matches. Per-seed numbers and p-values: "
        f"`{json_name}`.",
        "",
    ]


# --- record ---------------------------------------------------------------------------------


def device_name(device: str) -> str:
    return (
        torch.cuda.get_device_name(0)
        if device.startswith("cuda")
        else f"CPU ({torch.get_num_threads()} threads)"
    )


def write_record(
    *,
    task: str,
    args: Any,
    extra_config: dict[str, Any],
    results: dict[str, Any],
    started: float,
    stem: str,
    render: Callable[[dict[str, Any]], str],
) -> dict[str, Any]:
    """Write ``STEM.json`` and ``STEM.md`` under ``args.out_dir``; print the markdown."""
    record = run_record(
        task=task,
        command="python " + " ".join(shlex.quote(a) for a in sys.argv),
        device=device_name(args.device),
        config={
            **{k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            # The training defaults this benchmark runs with (TrainConfig's, i.e. Table 7).
            **{
                name: value
                for name, value in dataclasses.asdict(TrainConfig()).items()
                if name in ("lr", "momentum", "batch_size", "weight_decay")
            },
            **extra_config,
        },
        results=results,
        total_seconds=round(time.perf_counter() - started, 1),
        python=platform.python_version(),
    )
    args.out_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.out_dir / f"{stem}.json", record)
    write_text_atomic(args.out_dir / f"{stem}.md", render(record))
    print(render(record))
    print(json.dumps({"total_seconds": record["total_seconds"]}))
    return record
