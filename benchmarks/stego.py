"""DeepStego (Li and Guo, seed 002) on real data: the paper's Tables 2-5 with our numbers
next to the paper's.

Per data set it makes a ``stego`` key (the encoder trained with a proxy host at keygen),
trains a clean model and a watermarked one (the paper's CNN for the data), and reports

- Table 2, fidelity and effectiveness: test accuracy without and with the watermark; the
  trigger accuracy (answers equal to the key labels) of both models, on the key images and
  on fresh triggers (test images through the key's encoder); plus the key's clean
  originals, which a memorising host would also answer with the key labels;
- Table 4, invisibility: PSNR and SSIM of the key images against their covers, and a picture
  of cover / stego / residual magnified 5x;
- Table 3, security: detection accuracy of a SPAM + RBF-SVM steganalyser
  (:mod:`ownmark.steganalysis`), supervised (trained on labelled covers and triggers) and
  ATS (unsupervised; the paper's method), for our triggers with the encoder's weights known
  and unknown (the attacker's look-alike encoder), and for Zhang's three triggers;
- Table 5, legality: triggers made by three encoders trained the way the paper's attacker
  does (same architecture, losses, covers and logo, other seeds, no host), and by a fourth
  the attacker trains with its own proxy host, fed to our watermarked model: accuracy
  against our key labels, next to ours;
- the verdict through ownmark's HTTP server (alpha 1e-6, decoys) for the watermarked and
  the clean model.

Usage::

    python benchmarks/stego.py --dataset mnist --data-path ../shared/data/mnist --epochs 3
    python benchmarks/stego.py --dataset cifar10 --data-path ../shared/data/cifar10 \\
        --train-subset 10000 --epochs 6
"""

from __future__ import annotations

import argparse
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from common import benchmark_record, cached_key, cached_model, log, pct
from ownmark.calibrate import calibrate_key
from ownmark.data import DataSplits, load_dataset
from ownmark.fileio import atomic_path, write_json_atomic, write_text_atomic
from ownmark.keys import KeySet
from ownmark.metrics import accuracy
from ownmark.models import Classifier
from ownmark.schemes import create_scheme, key_label_lookup, scheme_for_key
from ownmark.similarity import psnr, ssim
from ownmark.steganalysis import DetectionResult, ats_detection, supervised_detection
from ownmark.train import TrainConfig
from ownmark.workflows import (
    default_arch,
    make_key,
    subset_data,
    train_model,
    verify_served,
)

#: Seed 002, Table 2 (CIFAR-10, VGG-16 / VGG-19 / ResNet50): test accuracy without and with
#: the watermark, trigger accuracy on the unwatermarked and the watermarked model, %.
PAPER_TABLE2 = {
    "VGG-16": (92.88, 92.21, 10.13, 98.65),
    "VGG-19": (93.58, 91.88, 9.73, 98.45),
    "ResNet50": (93.45, 92.78, 9.85, 99.02),
}
#: Seed 002, Table 3: ATS detection rate, %.
PAPER_TABLE3 = {
    "stego, weights known": 98,
    "stego, weights unknown": 59,
    "Zhang et al. 2018": 94,
    "Adi et al. 2018": 97,
    "Guo et al. 2018": 80,
}
#: Seed 002, Table 5: trigger accuracy of three look-alike encoders (seeds 223, 142, 332)
#: and of the owner's (seed 22), %.
PAPER_TABLE5: dict[str, Any] = {"look-alikes": (13, 10, 12), "owner": 97}
ZHANG = ("content", "noise", "unrelated")


def trained(
    path: Path,
    data: DataSplits,
    config: TrainConfig,
    key: KeySet | None = None,
    arch: str | None = None,
) -> Classifier:
    """The host saved at ``path``, or trained (``config``, the paper CNN) and saved there."""
    return cached_model(
        path,
        lambda: train_model(data, config, arch=arch or default_arch(data), key=key, progress=False)[
            0
        ],
    )


def triggers_of(key: KeySet, covers: torch.Tensor) -> torch.Tensor:
    return scheme_for_key(key).make_triggers(covers, torch.Generator().manual_seed(0))


def table2(
    key: KeySet, marked: Classifier, clean: Classifier, data: DataSplits, fresh: int
) -> dict[str, Any]:
    covers, truth = data.test.images[:fresh], data.test.labels[:fresh]
    stego = triggers_of(key, covers)
    wanted = key_label_lookup(key)[truth]
    row: dict[str, Any] = {}
    for name, model in (("clean", clean), ("marked", marked)):
        row[name] = {
            "test": pct(accuracy(model, data.test.images, data.test.labels)),
            "key": pct(accuracy(model, key.images, key.labels)),
            "fresh": pct(accuracy(model, stego, wanted)),
            "originals": pct(accuracy(model, key.originals, key.labels)),
            "covers": pct(accuracy(model, covers, wanted)),
        }
    return row


def invisibility(key: KeySet, picture: Path) -> dict[str, Any]:
    quality = psnr(key.images, key.originals)
    similarity = ssim(key.images, key.originals)
    residual = key.images.float() - key.originals.float()
    _save_picture(key, picture)
    return {
        "psnr_mean": round(float(quality.mean()), 2),
        "psnr_min": round(float(quality.min()), 2),
        "ssim_mean": round(float(similarity.mean()), 4),
        "ssim_min": round(float(similarity.min()), 4),
        "residual_rms_grey_levels": round(float(residual.pow(2).mean().sqrt()), 2),
        "residual_max_grey_levels": int(residual.abs().max()),
        "picture": picture.name,
    }


def _save_picture(key: KeySet, path: Path, count: int = 6) -> None:
    """Rows: cover, stego, |residual| x 5 (Table 4), ``count`` columns, scaled up 4x."""
    covers = key.originals[:count].float()
    stego = key.images[:count].float()
    residual = ((stego - covers).abs() * 5).clamp(0, 255)
    rows = [torch.cat(list(t), dim=2) for t in (covers, stego, residual)]
    grid = torch.cat(rows, dim=1).to(torch.uint8)  # C x 3H x count*W
    array = grid.permute(1, 2, 0).numpy()
    image = Image.fromarray(array[:, :, 0] if array.shape[2] == 1 else array)
    image = image.resize((image.width * 4, image.height * 4), Image.Resampling.NEAREST)
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")


def detection_row(result: DetectionResult) -> dict[str, Any]:
    return {
        "accuracy": pct(result.accuracy),
        "tpr": pct(result.true_positive_rate),
        "fpr": pct(result.false_positive_rate),
        "test_images": result.test_images,
        "svm": result.svm,
    }


def table3(
    key: KeySet, lookalike: KeySet, zhang: dict[str, KeySet], data: DataSplits, size: int
) -> dict[str, Any]:
    """Steganalysis on test images: the first ``2 * size`` train the supervised detector,
    the next ``2 * size`` are judged (half covers, half triggers)."""
    pool = data.test.images
    train_c, train_t = pool[:size], pool[size : 2 * size]
    test_c, test_t = pool[2 * size : 3 * size], pool[3 * size : 4 * size]
    out: dict[str, Any] = {}

    def run(name: str, make: Any, attacker_make: Any, ats: bool) -> None:
        log(f"steganalysis: {name}")
        ours = make(test_t)
        row = {
            "supervised": detection_row(
                supervised_detection(train_c, attacker_make(train_t), test_c, ours)
            )
        }
        if ats:
            row["ats"] = detection_row(ats_detection(test_c, ours, attacker_make))
        out[name] = row

    run("stego, weights known", lambda x: triggers_of(key, x), lambda x: triggers_of(key, x), True)
    run(
        "stego, weights unknown",
        lambda x: triggers_of(key, x),
        lambda x: triggers_of(lookalike, x),
        True,
    )
    for name, zkey in zhang.items():
        if name == "unrelated":
            # Its triggers are out-of-distribution images, not marked covers: the key's own
            # images, half to train the detector and half to test it, against as many covers;
            # ATS does not apply (there is nothing to embed twice).
            half = len(zkey.images) // 2
            log("steganalysis: Zhang unrelated")
            result = supervised_detection(
                pool[:half], zkey.images[:half], pool[half : 2 * half], zkey.images[half:]
            )
            out["Zhang unrelated"] = {"supervised": detection_row(result)}
            continue
        # Zhang's other triggers come from a public recipe; ATS re-embeds with it.
        run(
            f"Zhang {name}",
            lambda x, k=zkey: triggers_of(k, x),
            lambda x, k=zkey: triggers_of(k, x),
            True,
        )
    return out


def table5(
    key: KeySet, marked: Classifier, others: dict[str, KeySet], data: DataSplits, count: int
) -> dict[str, Any]:
    covers, truth = data.test.images[:count], data.test.labels[:count]
    wanted = key_label_lookup(key)[truth]
    rows = {
        name: pct(accuracy(marked, triggers_of(other, covers), wanted))
        for name, other in others.items()
    }
    rows["ours"] = pct(accuracy(marked, triggers_of(key, covers), wanted))
    rows["clean covers"] = pct(accuracy(marked, covers, wanted))
    return rows


def run(args: argparse.Namespace) -> dict[str, Any]:
    data = load_dataset(args.dataset, args.data_path)
    data, subsets = subset_data(data, train_subset=args.train_subset)
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    seed = args.seed
    params = {
        "num_keys": args.num_keys,
        "target_psnr": args.target_psnr,
        "joint_epochs": args.joint_epochs,
    }
    key = cached_key(
        cache / f"stego-s{seed}.key.safetensors",
        lambda: make_key(data, "stego", seed=seed, dataset=args.dataset, **params),
    )
    config = TrainConfig(epochs=args.epochs, seed=seed, key_ratio=args.key_ratio)
    clean = trained(cache / f"clean-s{seed}.safetensors", data, config)
    marked = trained(cache / f"stego-s{seed}.safetensors", data, config, key)
    # Calibration references: two architectures (the data's CNN and LeNet-5), other seeds.
    references = [
        trained(
            cache / f"reference{i}-{arch}-s{seed}.safetensors",
            data,
            TrainConfig(epochs=args.epochs, seed=seed + 100 + i),
            arch=arch,
        )
        for i, arch in enumerate((default_arch(data), "lenet5"))
    ]
    # The attacker's look-alike encoders (Table 5): the paper's three are trained for
    # invisibility only ("we are only training this stego-model and discriminator"); a fourth
    # also trains with the attacker's own proxy host.
    others: dict[str, KeySet] = {}
    for other_seed in (223, 142, 332):
        others[f"look-alike seed {other_seed} (no host)"] = cached_key(
            cache / f"lookalike-{other_seed}.key.safetensors",
            lambda s=other_seed: create_scheme("stego", **{**params, "joint_epochs": 0}).generate(
                data, seed=s
            ),
        )
    others["look-alike seed 22 (own proxy host)"] = cached_key(
        cache / "lookalike-22-joint.key.safetensors",
        lambda: create_scheme("stego", **params).generate(data, seed=22),
    )
    zhang = {
        name: cached_key(
            cache / f"{name}-s{seed}.key.safetensors",
            lambda n=name: make_key(data, n, seed=seed, dataset=args.dataset, num_keys=100),
        )
        for name in ZHANG
    }
    log("measuring")
    calibrated, calibration = calibrate_key(
        key,
        references,
        test=data.test,
        allow_weak=True,
        min_reference_accuracy=args.min_reference_accuracy,
    )
    served = verify_served(marked, calibrated)
    innocent = verify_served(clean, calibrated)
    picture = Path(args.out_dir) / f"stego_{args.dataset}_table4.png"
    return {
        "subsets": subsets,
        "table2": table2(key, marked, clean, data, args.fresh),
        "table4": invisibility(key, picture),
        "table3": table3(
            key,
            others["look-alike seed 22 (own proxy host)"],
            zhang,
            data,
            args.steganalysis_images,
        ),
        "table5": table5(key, marked, others, data, args.fresh),
        "verification": {
            "p0": calibrated.p0,
            "calibration": calibration.as_dict(),
            "marked": {
                "verdict": served.verdict.value,
                "key_queries": served.queries,
                "p_value": served.p_value,
            },
            "clean": {
                "verdict": innocent.verdict.value,
                "key_queries": innocent.queries,
                "p_value": innocent.p_value,
            },
        },
    }


def markdown(record: dict[str, Any]) -> str:
    cfg, res = record["config"], record["results"]
    t2, t4, t3, t5 = res["table2"], res["table4"], res["table3"], res["table5"]
    dataset = cfg["dataset"]
    size = "all training images" if not cfg["train_subset"] else f"{cfg['train_subset']} images"
    lines = [
        f"# DeepStego (seed 002) on {dataset}: Tables 2-5, ours next to the paper's",
        "",
        f"**CPU configuration (no GPU lent to this task): {arch_of_name(dataset)} trained "
        f"{cfg['epochs']} epochs on {size}, one seed ({cfg['seed']}). The paper trains "
        "VGG-16/19 and ResNet50 on CIFAR-10 to convergence.**",
        "",
        f"- command: `{record['command']}`",
        f"- machine: {record['machine_info']}",
        f"- date: {record['date']}; wall time {record['seconds']:.0f} s",
        f"- key: {cfg['num_keys']} stego images, residual energy {cfg['target_psnr']} dB PSNR; "
        f"encoder trained {cfg['joint_epochs']} epochs with a proxy host at keygen; key share "
        f"of each embedding epoch {cfg['key_ratio']}; fresh triggers: the first "
        f"{cfg['fresh']} test images through the key's encoder",
        "",
        "## Table 2: fidelity and effectiveness",
        "",
        "| model | test acc. | trigger acc. (key images) | trigger acc. (fresh triggers) "
        "| key originals answered with key labels | clean covers answered with key labels |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name in ("clean", "marked"):
        r = t2[name]
        lines.append(
            f"| {'unwatermarked' if name == 'clean' else 'watermarked'} | {r['test']} | "
            f"{r['key']} | {r['fresh']} | {r['originals']} | {r['covers']} |"
        )
    lines += [
        "",
        "Paper (CIFAR-10): test accuracy unwatermarked / watermarked, trigger accuracy "
        "unwatermarked / watermarked: "
        + "; ".join(f"{k} {a} / {b}, {c} / {d}" for k, (a, b, c, d) in PAPER_TABLE2.items())
        + ". The paper's ~10% unwatermarked trigger accuracy is chance over 10 classes; ours "
        "is lower because every key label differs from the image's true class (section 4.1), "
        "which a clean model answers.",
        "",
        "## Table 4: invisibility",
        "",
        f"PSNR {t4['psnr_mean']} dB (min {t4['psnr_min']}), SSIM {t4['ssim_mean']} (min "
        f"{t4['ssim_min']}); residual RMS {t4['residual_rms_grey_levels']} grey levels, largest "
        f"{t4['residual_max_grey_levels']}. The issue's target: PSNR >= 40 dB, SSIM >= 0.98.",
        "",
        f"![cover / stego / residual x5]({t4['picture']})",
        "",
        "Rows: covers, stego images, |residual| x 5 (the paper's Table 4 layout).",
        "",
        "## Table 3: security (SPAM features, RBF SVM)",
        "",
        "| triggers | supervised detector: acc. (TPR / FPR) | ATS: acc. (TPR / FPR) "
        "| paper (ATS) |",
        "| --- | ---: | ---: | ---: |",
    ]
    for name, row in t3.items():
        sup = row["supervised"]
        ats = row.get("ats")
        paper_name = name if name.startswith("stego") else "Zhang et al. 2018"
        lines.append(
            f"| {name} | {sup['accuracy']} ({sup['tpr']} / {sup['fpr']}) | "
            + (f"{ats['accuracy']} ({ats['tpr']} / {ats['fpr']})" if ats else "n/a")
            + f" | {PAPER_TABLE3[paper_name]} |"
        )
    lines += [
        "",
        f"Balanced test sets of {2 * cfg['steganalysis_images']} images (50% is chance); the "
        'supervised detector trains on as many other labelled images. "Weights unknown": '
        "the detector's triggers come from the attacker's look-alike encoder (seed 22, trained "
        "with its own proxy host), ours are tested. ATS for `unrelated` is n/a: its embedding "
        "replaces the image, and its row uses the key's 100 images (50 to train, 50 to test).",
        "",
        "## Table 5: legality (triggers of other encoders on our watermarked model)",
        "",
        "| encoder | trigger acc. (our key labels) |",
        "| --- | ---: |",
    ]
    lines += [f"| {name} | {value} |" for name, value in t5.items()]
    lines += [
        "",
        f"Paper: look-alikes {', '.join(map(str, PAPER_TABLE5['look-alikes']))}%, the owner's "
        f"{PAPER_TABLE5['owner']}%.",
        "",
        "## Verification through ownmark's HTTP server (alpha 1e-6, decoys)",
        "",
        f"Calibrated p0 {res['verification']['p0']:.4f} on two clean references (refused "
        f"below {100 * cfg.get('min_reference_accuracy', 0.5):.0f}% test accuracy). Watermarked "
        f"model: **{res['verification']['marked']['verdict']}** in "
        f"{res['verification']['marked']['key_queries']} key queries; clean model: "
        f"**{res['verification']['clean']['verdict']}** in "
        f"{res['verification']['clean']['key_queries']}.",
        "",
    ]
    return "\n".join(lines)


def arch_of_name(dataset: str) -> str:
    return "zhang_mnist" if dataset == "mnist" else "zhang_cifar10"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", choices=["mnist", "cifar10"], default="mnist")
    parser.add_argument("--data-path", required=True)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--joint-epochs", type=int, default=10)
    parser.add_argument("--target-psnr", type=float, default=24.0)
    parser.add_argument("--train-subset", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-keys", type=int, default=100)
    parser.add_argument("--key-ratio", type=float, default=0.15)
    parser.add_argument("--fresh", type=int, default=1000)
    parser.add_argument("--steganalysis-images", type=int, default=500)
    parser.add_argument(
        "--min-reference-accuracy",
        type=float,
        default=0.5,
        help="calibration refuses weaker references (default 0.5; short CPU runs on CIFAR-10 "
        "fall below it)",
    )
    parser.add_argument("--cache", default="/tmp/ownmark-stego-cache")
    parser.add_argument("--out-dir", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    args.cache = str(Path(args.cache) / args.dataset)
    started = datetime.now(timezone.utc)
    results = run(args)
    record = benchmark_record("stego benchmark", args, started, results)
    name = f"stego_{args.dataset}"
    write_json_atomic(args.out_dir / f"{name}.json", record)
    write_text_atomic(args.out_dir / f"{name}.md", markdown(record))
    log(f"wrote {args.out_dir / name}.md")


if __name__ == "__main__":
    main()
