"""Universal deep hiding + metric learning (seed 004) and licensee tracing, MNIST or CIFAR-10.

Reports, next to the paper's abstract claims (watermark accuracy > 90%, clean accuracy loss
< 0.05 points):

- fidelity and effectiveness: clean accuracy with and without the watermark; trigger
  accuracy (key images and fresh triggers) of the watermarked and the clean model; the same
  with the triplet term off (the ablation, same key, same residual);
- invisibility: PSNR / SSIM of triggers against covers; identity leg: NCC of the copyright
  image revealed from triggers vs. from clean covers, and its threshold;
- robustness of both legs: pruning 10..90% and fine-tuning (label leg: watermark accuracy on
  fresh triggers and the verdict), an API that JPEG-compresses (quality 50, 70, 90) or blurs
  (sigma 1) its queries (label leg through that API; identity leg on triggers laundered the
  same way);
- licensee tracing: five licensee copies fine-tuned from one base model, each key calibrated
  on clean references plus the other licensees' copies; each copy traced as released, after
  pruning 50% and after fine-tuning; the clean base model and another owner's model; two
  licensees who average their copies' weights (``--licensees``, default 5 on MNIST, where the
  issue asks for it, 0 elsewhere).

The clean accuracy loss is given with a 95% interval from the paired test predictions of the
two models (the images only one of them gets right), so a difference below the test set's
resolution reads as such.

Every stage after training writes what it measured to ``<name>.partial.json`` before the next
one starts, and a stage that fails is recorded (with its error) rather than ending the run: a
run on a lent GPU whose time is short still brings back what it got.

Usage::

    python benchmarks/udh.py --data-path ../shared/data/mnist --epochs 2
    python benchmarks/udh.py --dataset cifar10 --data-path cifar10-18k-5k.tar.xz \
        --arch resnet18 --device cuda --epochs 30

(``cifar10-18k-5k.tar.xz``: see ``benchmarks/cifar_subset.py``; ``--train-subset`` and
``--test-subset`` take stratified subsets of any data set.) ``--render JSON`` rewrites the page
of a record, with ``--earlier`` (a partial record of an earlier run) and ``--notes``.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import shlex
import sys
import time
import traceback
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from common import (
    benchmark_record,
    cached_key,
    cached_model,
    fresh_key,
    log,
    pct,
    pruning_rows,
    suspect_of,
)
from ownmark.attacks import create_attack
from ownmark.attacks.base import AttackData
from ownmark.attacks.preprocess import gaussian_blur, jpeg
from ownmark.calibrate import calibrate_key
from ownmark.data import DataSplits, load_dataset
from ownmark.fileio import write_json_atomic, write_text_atomic
from ownmark.keys import KeySet
from ownmark.metrics import accuracy, answer_accuracy, predict
from ownmark.models import Classifier
from ownmark.schemes import create_scheme, scheme_for_key
from ownmark.schemes.udh import PAYLOAD, UDHScheme, ncc
from ownmark.similarity import psnr, ssim
from ownmark.trace import calibrate_licensees, trace_licensees
from ownmark.train import TrainConfig
from ownmark.verify import LocalModelSuspect, verify_ownership
from ownmark.workflows import (
    attack_model,
    attacker_data,
    default_arch,
    new_model,
    subset_data,
    train_model,
)

RATES = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
#: Clean reference networks the key is calibrated on, per data set (the second one is trained
#: with a different seed and architecture from the suspect models where one is at hand).
REFERENCES = {"mnist": ("zhang_mnist", "lenet5"), "cifar10": ("zhang_cifar10", "resnet18")}


def guarded(stage: str, measure: Callable[[], Any]) -> Any:
    """``measure()``, or ``{"error": ...}`` if it fails: one stage's failure is recorded, and the
    run goes on to the next (the traceback goes to the log)."""
    try:
        return measure()
    except Exception as exc:  # a benchmark reports what failed, then goes on
        log(f"{stage} failed:\n{traceback.format_exc()}")
        return {"error": f"{type(exc).__name__}: {exc}"}


def paired_difference(
    clean: Classifier, marked: Classifier, images: torch.Tensor, labels: torch.Tensor
) -> dict[str, float]:
    """Watermarked minus clean test accuracy, in points, with a 95% interval from the paired
    predictions (normal approximation on the images only one model gets right)."""
    a = predict(clean, images).cpu() == labels
    b = predict(marked, images).cpu() == labels
    n = len(labels)
    only_marked = float((b & ~a).sum())
    only_clean = float((a & ~b).sum())
    diff = (only_marked - only_clean) / n
    variance = max((only_marked + only_clean) / n - diff**2, 0.0) / n
    half = 1.96 * variance**0.5
    return {
        "points": round(100 * diff, 2),
        "low": round(100 * (diff - half), 2),
        "high": round(100 * (diff + half), 2),
        "only_clean_right": int(only_clean),
        "only_marked_right": int(only_marked),
        "images": n,
    }


def owner_rows(
    key: KeySet,
    fresh: KeySet,
    marked: Classifier,
    clean: Classifier,
    data: DataSplits,
    args: argparse.Namespace,
    out: dict[str, Any],
    save: Callable[[], None],
) -> None:
    """Fill ``out`` with the owner's rows (``fresh``: the key with fresh triggers), calling
    ``save()`` after each stage (``out`` is already part of what ``save`` writes)."""
    scheme = scheme_for_key(key)
    assert isinstance(scheme, UDHScheme)
    payload = key.extra[PAYLOAD].float() / 255.0
    covers = data.test.images[:1000]
    identity = scheme.identity(key)
    # Verdicts need a calibrated key (clean references); without them they are not measured.
    verify = args.references

    def verdict(suspect: Any) -> str:
        return verify_ownership(key, suspect_of(suspect)).verdict.value if verify else "-"

    out |= {
        "test": pct(accuracy(marked, data.test.images, data.test.labels)),
        "clean_loss": paired_difference(clean, marked, data.test.images, data.test.labels),
        "key": pct(accuracy(marked, key.images, key.labels)),
        "fresh": pct(accuracy(marked, fresh.images, fresh.labels)),
        "clean_model_key": pct(accuracy(clean, key.images, key.labels)),
        "clean_model_fresh": pct(accuracy(clean, fresh.images, fresh.labels)),
        "psnr": round(float(psnr(key.images, key.originals).mean()), 2),
        "ssim": round(float(ssim(key.images, key.originals).mean()), 4),
        "identity": identity,
        "clean_cover_ncc_mean": round(float(ncc(scheme.reveal(covers), payload).mean()), 4),
    }
    save()
    out["verdict"] = verdict(marked)
    out["clean_verdict"] = verdict(clean)
    save()

    out["pruning"] = guarded("pruning", lambda: pruning_rows(marked, RATES, data, fresh))
    save()

    def finetune() -> dict[str, Any]:
        attack = create_attack(
            "finetune",
            progress=False,
            seed=args.seed,
            epochs=args.finetune_epochs,
            device=args.device,
        )
        tuned, metrics = attack_model(
            marked, attack, data=attacker_data(attack, data, marked), key=fresh
        )
        return {
            "epochs": args.finetune_epochs,
            "test": pct(metrics["test_accuracy"]),
            "wm": pct(metrics["watermark_accuracy"]),
            "verdict": verdict(tuned),
        }

    out["finetune"] = guarded("fine-tuning", finetune)
    save()
    laundering: dict[str, Any] = {}
    for name, params, launder in (
        ("jpeg q50", {"kind": "jpeg", "quality": 50}, lambda x: jpeg(x, 50)),
        ("jpeg q70", {"kind": "jpeg", "quality": 70}, lambda x: jpeg(x, 70)),
        ("jpeg q90", {"kind": "jpeg", "quality": 90}, lambda x: jpeg(x, 90)),
        ("blur sigma 1", {"kind": "blur", "sigma": 1.0}, lambda x: gaussian_blur(x, 1.0)),
    ):

        def through_api(params: dict[str, Any] = params, launder: Any = launder) -> Any:
            api = suspect_of(create_attack("preprocess", **params)(marked, AttackData()))
            revealed = ncc(scheme.reveal(launder(key.images)), payload)
            return {
                "wm": pct(answer_accuracy(api, fresh.images, fresh.labels)),
                "test": pct(answer_accuracy(api, data.test.images, data.test.labels)),
                "verdict": verdict(api),
                "identity_ncc_mean": round(float(revealed.mean()), 4),
                "identity_share_above": pct(
                    float((revealed > identity["threshold"]).float().mean())
                ),
            }

        laundering[name] = guarded(f"API {name}", through_api)
        out["laundering"] = laundering
        save()


def trace_row(keys: dict[str, KeySet], model: Any) -> dict[str, Any]:
    result = trace_licensees(keys, suspect_of(model))
    return {
        "attribution": result.attribution,
        "licensees": result.licensees,
        "matches": {t.licensee: f"{t.matches}/{t.queries}" for t in result.tests},
    }


def tracing_rows(
    data: DataSplits,
    clean: Classifier,
    marked: Classifier,
    references: list[Classifier],
    train: Callable[..., Any],
    args: argparse.Namespace,
) -> dict[str, Any]:
    """Licensee copies fine-tuned from the clean base model, one key each, traced as released,
    pruned and fine-tuned; plus innocents and a collusion."""
    cache = Path(args.cache)
    keys: dict[str, KeySet] = {}
    copies: dict[str, Classifier] = {}
    for i in range(1, args.licensees + 1):
        name = f"licensee-{i}"
        keys[name] = cached_key(
            cache / f"{name}.key.safetensors",
            lambda i=i: create_scheme("udh", num_keys=100, licensee=i).generate(
                data, seed=args.seed + i
            ),
        )
        copies[name] = cached_model(
            cache / f"{name}.safetensors",
            lambda n=name: train(args.arch, args.seed + 50, keys[n], init=copy.deepcopy(clean)),
        )
    log("calibrating the licensee keys")
    calibrated, _ = calibrate_licensees(
        keys,
        copies,
        references,
        test=data.test,
        allow_weak=True,
        min_reference_accuracy=args.min_reference_accuracy,
    )
    tracing: dict[str, Any] = {"copies": {}}
    for name, model in copies.items():
        log(f"tracing {name}")
        row: dict[str, Any] = {
            "test": pct(accuracy(model, data.test.images, data.test.labels)),
            "own_key": pct(accuracy(model, keys[name].images, keys[name].labels)),
            "released": trace_row(calibrated, model),
        }
        pruned = create_attack("prune", rate=0.5)(model, AttackData())
        row["pruned 50%"] = trace_row(calibrated, pruned)
        attack = create_attack("finetune", progress=False, seed=args.seed, epochs=3)
        tuned, _ = attack_model(model, attack, data=attacker_data(attack, data, model))
        row["fine-tuned"] = trace_row(calibrated, tuned)
        tracing["copies"][name] = row
    tracing["clean base model"] = trace_row(calibrated, clean)
    tracing["another owner's model"] = trace_row(calibrated, marked)
    a, b = copies["licensee-1"], copies["licensee-2"]
    blend = copy.deepcopy(a)
    blend.load_state_dict({n: (t + b.state_dict()[n]) / 2 for n, t in a.state_dict().items()})
    tracing["collusion: average of licensees 1 and 2"] = {
        "test": pct(accuracy(blend, data.test.images, data.test.labels)),
        **trace_row(calibrated, blend),
    }
    tracing["p0"] = {name: round(k.p0, 4) for name, k in calibrated.items()}
    return tracing


#: Work of the trainings a run makes, in clean-model epochs: clean host, its reference twin,
#: the watermarked host and its ablation (each ~1.3: key repetitions, on-the-fly triggers),
#: and the small reference CNN.
TRAINING_WORK = 1 + 1 + 1.3 + 1.3 + 0.2


def epochs_within(seconds: float, data: DataSplits, arch: str, device: str, most: int) -> int:
    """The most epochs (1..``most``) for which all of a run's trainings fit in ``seconds``,
    from 20 timed SGD steps of ``arch`` on ``device`` (for a lent GPU whose time is short)."""
    model = new_model(arch, data).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    images = data.train.images[:128].float().div(255).to(device)
    labels = data.train.labels[:128].to(device)
    started = 0.0
    for step in range(25):
        if step == 5:  # the first steps pay for cudnn's algorithm search
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            started = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(model(images), labels)
        optimizer.zero_grad()
        loss.backward()  # type: ignore[no-untyped-call]
        optimizer.step()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    per_step = (time.perf_counter() - started) / 20
    epoch = per_step * -(-len(data.train) // 128)
    fits = int(seconds / (TRAINING_WORK * epoch))
    log(f"{arch}: {128 / per_step:.0f} images/s; {epoch:.1f} s an epoch; {fits} epochs fit")
    return max(1, min(most, fits))


def run(args: argparse.Namespace, save_partial: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    data = load_dataset(args.dataset, args.data_path)
    data, subsets = subset_data(data, train_subset=args.train_subset, test_subset=args.test_subset)
    args.arch = args.arch or default_arch(data)
    if args.train_seconds:
        args.epochs = epochs_within(
            args.train_seconds, data, args.arch, args.device, most=args.epochs
        )
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    seed = args.seed
    augment = args.dataset != "mnist"

    def train(arch: str, train_seed: int, key: KeySet | None = None, init: Any = None) -> Any:
        config = TrainConfig(
            epochs=args.epochs if init is None else args.copy_epochs,
            seed=train_seed,
            augment=augment,
            device=args.device,
        )
        return train_model(data, config, arch=arch, key=key, init=init, progress=False)[0]

    def model(name: str, make: Callable[..., Any]) -> Classifier:
        # Trained models come back on the CPU; measure them where they were trained.
        return cached_model(cache / f"{name}.safetensors", make).to(args.device)

    clean = model("clean", lambda: train(args.arch, seed))
    reference_archs = (args.reference_archs or REFERENCES[args.dataset]) if args.references else ()
    references = [
        model(f"ref-{i}-{arch}", lambda a=arch, i=i: train(a, seed + 100 + i))
        for i, arch in enumerate(reference_archs)
    ]
    raw = cached_key(
        cache / "owner.key.safetensors",
        lambda: create_scheme("udh", num_keys=100).generate(data, seed=seed),
    )
    owner = raw
    if references:
        owner, _ = calibrate_key(
            raw,
            references,
            test=data.test,
            allow_weak=True,
            min_reference_accuracy=args.min_reference_accuracy,
        )
    marked = model("owner", lambda: train(args.arch, seed, owner))
    results: dict[str, Any] = {
        "subsets": subsets,
        "train_images": len(data.train),
        "test_images": len(data.test),
        "references": {
            arch: pct(accuracy(ref, data.test.images, data.test.labels))
            for arch, ref in zip(reference_archs, references, strict=True)
        },
        "p0": round(owner.p0, 4) if references else None,
        "clean_test": pct(accuracy(clean, data.test.images, data.test.labels)),
    }
    fresh = fresh_key(owner, data, args.fresh)
    if args.ablation:
        no_triplet = dataclasses.replace(owner, params={**owner.params, "triplet_weight": 0.0})
        ablation = model("owner-no-triplet", lambda: train(args.arch, seed, no_triplet))
        results["ablation"] = {
            "test": pct(accuracy(ablation, data.test.images, data.test.labels)),
            "key": pct(accuracy(ablation, owner.images, owner.labels)),
            "fresh": pct(accuracy(ablation, fresh.images, fresh.labels)),
            "verdict": verify_ownership(owner, LocalModelSuspect(ablation)).verdict.value
            if references
            else "-",
        }
    log("measuring the owner's key")
    results["owner"] = {}
    owner_rows(
        owner, fresh, marked, clean, data, args, results["owner"], lambda: save_partial(results)
    )
    if args.licensees:
        results["tracing"] = guarded(
            "tracing", lambda: tracing_rows(data, clean, marked, references, train, args)
        )
    return results


def failed(row: Any) -> str | None:
    """The error a guarded stage recorded, or None."""
    return row.get("error") if isinstance(row, dict) else None


def markdown(
    record: dict[str, Any], earlier: dict[str, Any] | None = None, notes: str | None = None
) -> str:
    """The results page of one run; ``earlier``: the record of an earlier run of the same
    configuration whose rows this one skipped (marked "run 1"); ``notes``: Markdown to add."""
    cfg, res = record["config"], record["results"]
    o = res["owner"]
    ab = res.get("ablation") or dict.fromkeys(("test", "key", "fresh", "verdict"), "not run")
    if "ablation" not in res and earlier and "ablation" in earlier["results"]:
        ab = {k: f"{v} (run 1)" for k, v in earlier["results"]["ablation"].items()}
    ident = o["identity"]
    subset = res["subsets"]["train_subset"]
    source = f"`{Path(cfg['data_path']).name}`" if cfg.get("data_path") else "the data"
    images = f"{subset['size']:,} of {subset['of']:,}" if subset else f"all of {source}'s"
    if not subset and "train_images" in res:
        images = f"{res['train_images']:,}"
    test_subset = res["subsets"]["test_subset"]
    tests = f"{test_subset['size']:,} of {test_subset['of']:,}" if test_subset else "all its"
    if not test_subset and "test_images" in res:
        tests = f"{res['test_images']:,}"
    loss = o["clean_loss"]
    title = {"mnist": "full MNIST", "cifar10": "CIFAR-10"}.get(cfg["dataset"], cfg["dataset"])
    lines = [
        f"# UDH + metric learning (seed 004){' and licensee tracing' if cfg['licensees'] else ''}"
        f" on {title}",
        "",
        f"**{cfg['arch']} trained {cfg['epochs']} epochs on {images} training images "
        f"(test: {tests} images), on {record['machine_info'].split(';')[0]}; one seed.**",
        "",
        f"- command: `{record['command']}`",
        f"- machine: {record['machine_info']}",
        f"- date: {record['date']}; wall time {record['seconds']:.0f} s",
        "- key: 100 triggers, residual bound 10 grey levels, triplet weight 0.5 (margin 0.2 on "
        "normalised features); verification alpha 1e-6 with decoys, in process; p0 "
        + (
            f"{res['p0']} calibrated on clean references "
            + ", ".join(f"{a} ({v}%)" for a, v in res["references"].items())
            if res["p0"] is not None
            else "not calibrated (run without references: no verdicts, shown as -)"
        ),
        "",
        "## Fidelity and effectiveness (paper: watermark accuracy > 90%, clean loss < 0.05)",
        "",
        "| model | test acc. | trigger acc. (key) | trigger acc. (fresh) | verdict |",
        "| --- | ---: | ---: | ---: | --- |",
        f"| clean (no watermark) | {res['clean_test']} | {o['clean_model_key']} | "
        f"{o['clean_model_fresh']} | {o['clean_verdict']} |",
        f"| watermarked | {o['test']} | {o['key']} | {o['fresh']} | {o['verdict']} |",
        f"| watermarked without the triplet term (ablation) | {ab['test']} | {ab['key']} | "
        f"{ab['fresh']} | {ab['verdict']} |",
        "",
        f"Clean accuracy, watermarked minus clean: {loss['points']:+.2f} points, 95% interval "
        f"[{loss['low']:+.2f}, {loss['high']:+.2f}] from the paired predictions on "
        f"{loss['images']:,} test images ({loss['only_clean_right']} right only by the clean "
        f"model, {loss['only_marked_right']} only by the watermarked one).",
        "",
        "## Invisibility and the identity leg",
        "",
        f"Triggers vs. covers: PSNR {o['psnr']} dB, SSIM {o['ssim']}. Copyright image revealed "
        f"from the triggers: NCC {ident['mean']:.3f} (min {ident['min']:.3f}); from clean "
        f"covers: mean {o['clean_cover_ncc_mean']:.3f}; threshold {ident['threshold']:.3f}; "
        f"{100 * ident['share_above']:.0f}% of triggers above: "
        f"{'passed' if ident['passed'] else 'FAILED'}.",
        "",
        "## Robustness",
        "",
        "The identity leg reads the key's trigger images, not the suspect model: pruning and "
        "fine-tuning leave it as above. For an API that launders its queries, the last column "
        "reveals the image from triggers laundered the same way.",
        "",
        "| attack | test acc. | watermark acc. (fresh) | label leg verdict | identity leg: NCC "
        "(share above threshold) |",
        "| --- | ---: | ---: | --- | --- |",
    ]
    if failed(o["pruning"]):
        lines.append(f"| prune 10..90% | failed: {failed(o['pruning'])} | | | |")
    else:
        for row in o["pruning"]:
            lines.append(f"| prune {int(row['rate'] * 100)}% | {row['test']} | {row['wm']} | | |")
    ft = o["finetune"]
    if failed(ft):
        lines.append(f"| fine-tune | failed: {failed(ft)} | | | |")
    else:
        lines.append(
            f"| fine-tune {ft.get('epochs', 5)} epochs | {ft['test']} | {ft['wm']} | "
            f"{ft['verdict']} | |"
        )
    order = ("jpeg q50", "jpeg q70", "jpeg q90", "blur sigma 1")  # JSON files sort their keys
    for name, row in sorted(
        o["laundering"].items(),
        key=lambda item: order.index(item[0]) if item[0] in order else len(order),
    ):
        if failed(row):
            lines.append(f"| API {name} | failed: {failed(row)} | | | |")
            continue
        lines.append(
            f"| API {name} | {row['test']} | {row['wm']} | {row['verdict']} | "
            f"{row['identity_ncc_mean']:.3f} ({row['identity_share_above']}%) |"
        )
    if earlier:
        lines += earlier_markdown(earlier)
    if notes:
        lines += ["", "## Notes", "", notes]
    tr = res.get("tracing")
    if tr and failed(tr):
        lines += ["", f"Licensee tracing failed: {failed(tr)}"]
    elif tr:
        lines += tracing_markdown(tr)
    lines.append("")
    return "\n".join(lines)


def earlier_markdown(earlier: dict[str, Any]) -> list[str]:
    res = earlier["results"]
    refs = ", ".join(f"{a} {v}%" for a, v in res.get("references", {}).items())
    lines = [
        "",
        "## Run 1",
        "",
        f"- command: `{earlier['command']}`",
        f"- machine: {earlier['machine_info']}",
        f"- date: {earlier['date']}; stopped after {earlier['seconds']:.0f} s, when it had "
        "written what follows (its partial record is beside this file)",
        f"- {earlier['config']['epochs']} epochs; clean model: {res['clean_test']}% test "
        f"accuracy; clean references: {refs}; p0 {res.get('p0')}",
    ]
    if "ablation" in res:
        ab = res["ablation"]
        lines.append(
            f"- without the triplet term: {ab['test']}% test accuracy, key {ab['key']}%, fresh "
            f"triggers {ab['fresh']}%, verdict {ab['verdict']}"
        )
    return lines


def tracing_markdown(tr: dict[str, Any]) -> list[str]:
    others = len(tr["p0"]) - 1
    lines = [
        "",
        "## Licensee tracing",
        "",
        f"p0 per licensee key (calibrated on 2 clean references + the other {others} copies): "
        f"{tr['p0']}.",
        "",
        "| suspect | test acc. | own key acc. | as released | pruned 50% | fine-tuned |",
        "| --- | ---: | ---: | --- | --- | --- |",
    ]

    def said(row: dict[str, Any]) -> str:
        names = ", ".join(row["licensees"]) or "-"
        return f"{row['attribution']} ({names})"

    for name, row in tr["copies"].items():
        lines.append(
            f"| {name} | {row['test']} | {row['own_key']} | {said(row['released'])} | "
            f"{said(row['pruned 50%'])} | {said(row['fine-tuned'])} |"
        )
    for name in ("clean base model", "another owner's model"):
        lines.append(f"| {name} | | | {said(tr[name])} | | |")
    col = tr["collusion: average of licensees 1 and 2"]
    lines.append(f"| collusion: average of licensees 1 and 2 | {col['test']} | | {said(col)} | | |")
    lines += ["", "Matches per licensee key are in the JSON file beside this one."]
    return lines


def render(args: argparse.Namespace) -> None:
    record = json.loads(args.render.read_text())
    earlier = json.loads(args.earlier.read_text()) if args.earlier else None
    notes = args.notes.read_text().strip() if args.notes else None
    footer = f"Page written by `python {shlex.join(sys.argv)}`."
    text = markdown(record, earlier, notes) + "\n" + footer + "\n"
    write_text_atomic(args.render.with_suffix(".md"), text)
    log(f"wrote {args.render.with_suffix('.md')}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", choices=sorted(REFERENCES), default="mnist")
    parser.add_argument("--data-path")
    parser.add_argument(
        "--render",
        type=Path,
        default=None,
        help="write the .md page of an existing JSON record (no run)",
    )
    parser.add_argument(
        "--earlier", type=Path, default=None, help="with --render: an earlier run's record"
    )
    parser.add_argument(
        "--notes", type=Path, default=None, help="with --render: a Markdown file of notes"
    )
    parser.add_argument("--arch", default=None, help="host network (default: the paper CNN)")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument(
        "--train-seconds",
        type=float,
        default=None,
        help="fewer epochs than --epochs if the trainings would take longer (timed at start)",
    )
    parser.add_argument("--copy-epochs", type=int, default=1)
    parser.add_argument("--finetune-epochs", type=int, default=5)
    parser.add_argument("--train-subset", type=int, default=None)
    parser.add_argument("--test-subset", type=int, default=None)
    parser.add_argument("--fresh", type=int, default=1000, help="fresh triggers to score")
    parser.add_argument("--licensees", type=int, default=None, help="default 5 on MNIST, else 0")
    parser.add_argument("--min-reference-accuracy", type=float, default=0.5)
    parser.add_argument(
        "--no-references",
        dest="references",
        action="store_false",
        help="skip the clean references (and so the calibration and every verdict)",
    )
    parser.add_argument(
        "--reference-archs",
        type=lambda text: tuple(text.split(",")),
        default=None,
        help="clean reference networks, comma-separated (default: "
        + "; ".join(f"{k}: {','.join(v)}" for k, v in REFERENCES.items())
        + ")",
    )
    parser.add_argument(
        "--no-ablation", dest="ablation", action="store_false", help="skip the ablation model"
    )
    parser.add_argument("--device", default="cpu", help="cpu, cuda, auto ...")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache", default=None, help="default /tmp/ownmark-udh-cache/<dataset>")
    parser.add_argument("--out-dir", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--name", default=None, help="result file name (default udh[_DATASET])")
    args = parser.parse_args()
    if args.render:
        render(args)
        return
    if not args.data_path:
        parser.error("--data-path is required (unless --render)")
    if args.licensees is None:
        args.licensees = 5 if args.dataset == "mnist" else 0
    if args.licensees == 1:
        parser.error("--licensees: give 0 (no tracing) or at least 2")
    args.cache = args.cache or f"/tmp/ownmark-udh-cache/{args.dataset}"
    args.device = TrainConfig(device=args.device).device
    name = args.name or ("udh" if args.dataset == "mnist" else f"udh_{args.dataset}")
    started = datetime.now(timezone.utc)

    def record(results: dict[str, Any]) -> dict[str, Any]:
        return benchmark_record("udh benchmark", args, started, results, args.device)

    partial = args.out_dir / f"{name}.partial.json"
    results = run(args, lambda so_far: write_json_atomic(partial, record(so_far)))
    write_json_atomic(args.out_dir / f"{name}.json", record(results))
    write_text_atomic(args.out_dir / f"{name}.md", markdown(record(results)))
    partial.unlink(missing_ok=True)
    log(f"wrote {args.out_dir / name}.md")


if __name__ == "__main__":
    main()
