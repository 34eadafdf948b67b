"""Train (once) and cache every model the remote-verification benchmark needs, on full MNIST.

``benchmarks/verify_mnist.py`` measures verification against these models; training them is
the slow part, so it lives here and skips every model (and key) whose file already exists.
Keys follow issue 7's contract: by default each is a **secret multi-class key** (every class
``c`` mapped to a secret label ``pi(c)``, trigger secrets drawn from the key's seed) with its
control group of decoys stored in the key, embedded at ``TrainConfig(key_ratio=0.15)``. Per
Zhang scheme (content, unrelated, noise) it makes:

- the **calibration references**: 4 clean models shared by all schemes (zhang_mnist and lenet5,
  seeds 100-101, group "clean") and ``--other-key-refs`` models carrying other secret keys of
  the scheme (alternately lenet5 and zhang_mnist, group "other-key");
- the **owner's** key, calibrated on both reference groups (``ownmark.calibrate``; reference
  accuracies on the first ``--calibration-test`` test images), and a zhang_mnist model
  (``--wm-arch``) embedding it;
- ``--other-owners`` **other owners**: each a secret key of the same scheme, calibrated the
  same way, and a zhang_mnist model embedding it (innocent parties' watermarked models; their
  own keys on their own models also give the queries-to-alpha over several secrets);
- the **"before" case**: a key with Zhang et al.'s public setting (digit 1 -> label 0;
  content: "TEST" at the bottom; unrelated: letters -> 0), calibrated on the clean
  references only as before issue 7, a zhang_mnist model embedding it at the paper's
  ``key_ratio=0.05``, and a second party's key with the same public setting (another seed;
  no model);

and, for all schemes, the **null set**: ``--null-models`` clean models, lenet5 and zhang_mnist
with seeds 1-10 (disjoint from the references'), that must never be claimed.

Keys are made with given seeds (derived from their names), so a rebuilt cache makes the same
keys: fine for a benchmark, not for a real owner (``seed=None`` draws a fresh secret). Their
structure (label map, trigger secrets, decoys) is exactly the default one.

The cache layout is version 2 (``models.json`` says ``"layout": 2``): the pre-issue-7 cache
(``.bench-data/verify``) holds version-1 keys, which ``load_key`` refuses, so the default
folder is ``.bench-data/verify2``. ``--train-subset N`` / ``--test-subset N`` use N training
/ test images only (smoke tests). The folder records the data and epochs it was trained
with and refuses to mix. With the defaults it trains 42 models; the pre-issue-7 version
trained 30 in about an hour on 2 CPU cores, so expect about 1.5 hours (an estimate: this
version has not been run in full).

Usage::

    python benchmarks/verify_models.py --data-path ../shared/data/mnist --out .bench-data/verify2
    # smoke test (about 2 minutes on 2 busy cores):
    python benchmarks/verify_models.py --data-path ../shared/data/mnist --out /tmp/verify2-smoke \\
        --train-subset 2000 --test-subset 1000 --clean-epochs 3 --embed-epochs 3 \\
        --reference-seeds 100 --wm-arch lenet5 --other-key-refs 1 --other-owners 1 \\
        --null-models 1 --schemes content --min-reference-accuracy 0.1
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

from ownmark.calibrate import calibrate_key
from ownmark.data import DataSplits, ImageDataset, load_dataset
from ownmark.fileio import write_json_atomic
from ownmark.keys import KeySet, load_key, save_key
from ownmark.models import Classifier, load_model
from ownmark.train import TrainConfig
from ownmark.workflows import make_key, train_model

LAYOUT = 2
SCHEMES = ("content", "unrelated", "noise")
REFERENCE_SEEDS = [100, 101]
ARCHS = ("zhang_mnist", "lenet5")
#: Zhang et al.'s public setting per scheme: the "before" keys (one class, public label).
PAPER: dict[str, dict[str, Any]] = {
    "content": {"source_class": 1, "target_class": 0, "text": "TEST", "position": "bottom"},
    "unrelated": {"target_class": 0},
    "noise": {"source_class": 1, "target_class": 0},
}
#: Embedding ratios: secret multi-class keys need 0.15 (the default); one-class keys learn at 0.05.
SECRET_KEY_RATIO = 0.15
PAPER_KEY_RATIO = 0.05
#: Training seeds of the watermarked models (disjoint from the clean ones: 1-10 and 100-101).
OWNER_SEED, OTHER_SEED, PAPER_SEED, OTHER_KEY_REF_SEED = 0, 20, 40, 200


def key_seed(name: str) -> int:
    """The given seed of key ``name`` (reproducible; a real owner lets it be a fresh secret)."""
    return int.from_bytes(hashlib.sha256(f"verify2|{name}".encode()).digest()[:8], "big") >> 1


def _model(
    out: Path,
    name: str,
    data: DataSplits,
    config: TrainConfig,
    arch: str,
    key: KeySet | None,
) -> Classifier:
    """The cached model ``name``, trained now if missing (and refused if it embeds another key)."""
    path = out / f"{name}.safetensors"
    if path.is_file():
        metrics = json.loads(path.with_suffix(".json").read_text())
        wanted = key.commitment if key is not None else None
        if metrics.get("key_commitment") != wanted:
            sys.exit(
                f"{path} was trained with another key than {name}'s key file; delete the "
                f"model (or the whole folder {out}) and rerun"
            )
        return load_model(path)
    start = time.perf_counter()
    model, result = train_model(
        data,
        config,
        arch=arch,
        key=key,
        out=path,
        metrics_out=path.with_suffix(".json"),
        progress=False,
    )
    wm = "" if result.watermark_accuracy is None else f", wm {result.watermark_accuracy:.3f}"
    print(
        f"{name}: test {result.test_accuracy:.4f}{wm}, {time.perf_counter() - start:.0f} s",
        file=sys.stderr,
        flush=True,
    )
    return model


def _key(
    out: Path,
    name: str,
    data: DataSplits,
    scheme: str,
    args: argparse.Namespace,
    refs: list[tuple[str, str, Classifier]] | None,
    test: ImageDataset,
    **params: Any,
) -> KeySet:
    """The cached key ``name``: made with a given seed, calibrated on ``refs`` (None: raw)."""
    path = out / f"{name}.key"
    if path.is_file():
        return load_key(path)
    raw = make_key(
        data, scheme, seed=key_seed(name), dataset="mnist", num_keys=args.num_keys, **params
    )
    if refs is None:
        save_key(raw, path)
        return raw
    key, report = calibrate_key(
        raw,
        [model for _, _, model in refs],
        names=[n for n, _, _ in refs],
        groups=[g for _, g, _ in refs],
        test=test,
        min_reference_accuracy=args.min_reference_accuracy,
    )
    save_key(key, path)
    write_json_atomic(path.with_suffix(".calibration.json"), report.as_dict())
    print(
        f"{name}: p0 {key.p0:.4f}, kept {len(key)}/{len(raw)}, innocent tail "
        f"{report.innocent_tail:.2g}",
        file=sys.stderr,
        flush=True,
    )
    return key


def _summary(out: Path, name: str, key: KeySet, model: str | None) -> dict[str, Any]:
    report = out / f"{name}.calibration.json"
    calibration = json.loads(report.read_text()) if report.is_file() else None
    return {
        "key": f"{name}.key",
        "model": model,
        "p0": key.p0 if calibration else None,
        "kept": len(key),
        "secret_params": key.params.get("secret"),
        "innocent_tail": calibration["innocent_tail"] if calibration else None,
        "innocent_tail_bound": calibration["innocent_tail_bound"] if calibration else None,
    }


def load_data(args: argparse.Namespace) -> DataSplits:
    full = load_dataset("mnist", args.data_path)
    train, test = full.train, full.test
    if args.train_subset:
        rows = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))
        n = args.train_subset
        train = train.subset(rows[:n], f"mnist/train[{n}]")
    if args.test_subset:
        test = test.subset(torch.arange(args.test_subset), f"mnist/test[:{args.test_subset}]")
    return DataSplits(train=train, test=test)


def build(args: argparse.Namespace) -> dict[str, Any]:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = load_data(args)
    training = {
        "train": data.train.name,
        "test": data.test.name,
        "clean_epochs": args.clean_epochs,
        "embed_epochs": args.embed_epochs,
    }
    manifest = out / "models.json"
    if manifest.is_file():
        previous = json.loads(manifest.read_text())
        if previous.get("layout") != LAYOUT or previous.get("training") != training:
            sys.exit(
                f"{out} holds models of another layout or training "
                f"({previous.get('layout')}, {previous.get('training')}); use another --out"
            )
    else:  # claim the folder for this layout and training before training anything
        write_json_atomic(manifest, {"layout": LAYOUT, "training": training})
    test = data.test.subset(torch.arange(min(args.calibration_test, len(data.test))))

    def config(seed: int, key_ratio: float | None = None) -> TrainConfig:
        if key_ratio is None:
            return TrainConfig(epochs=args.clean_epochs, seed=seed)
        return TrainConfig(epochs=args.embed_epochs, seed=seed, key_ratio=key_ratio)

    clean: list[tuple[str, str, Classifier]] = []
    for arch in ARCHS:
        for seed in args.reference_seeds:
            name = f"reference-{arch}-s{seed}"
            clean.append((name, "clean", _model(out, name, data, config(seed), arch, None)))
    schemes: dict[str, Any] = {}
    for scheme in args.schemes:
        other_refs: list[tuple[str, str, Classifier]] = []
        for j in range(args.other_key_refs):
            name = f"refkey{j}-{scheme}"
            key = _key(out, name, data, scheme, args, None, test)
            cfg = config(OTHER_KEY_REF_SEED + j, SECRET_KEY_RATIO)
            model = _model(out, name, data, cfg, ARCHS[(j + 1) % 2], key)
            other_refs.append((name, "other-key", model))
        refs = clean + other_refs
        owner_key = _key(out, f"owner-{scheme}", data, scheme, args, refs, test)
        cfg = config(OWNER_SEED, SECRET_KEY_RATIO)
        _model(out, f"owner-{scheme}", data, cfg, args.wm_arch, owner_key)
        others = []
        for i in range(args.other_owners):
            name = f"other{i}-{scheme}"
            key = _key(out, name, data, scheme, args, refs, test)
            cfg = config(OTHER_SEED + i, SECRET_KEY_RATIO)
            _model(out, name, data, cfg, args.wm_arch, key)
            others.append(_summary(out, name, key, name))
        paper = PAPER[scheme]
        paper_key = _key(out, f"paper-{scheme}", data, scheme, args, clean, test, **paper)
        cfg = config(PAPER_SEED, PAPER_KEY_RATIO)
        _model(out, f"paper-{scheme}", data, cfg, args.wm_arch, paper_key)
        rival_key = _key(out, f"paperrival-{scheme}", data, scheme, args, clean, test, **paper)
        schemes[scheme] = {
            "owner": _summary(out, f"owner-{scheme}", owner_key, f"owner-{scheme}"),
            "others": others,
            "paper": _summary(out, f"paper-{scheme}", paper_key, f"paper-{scheme}"),
            "paper_rival": _summary(out, f"paperrival-{scheme}", rival_key, None),
            "paper_setting": paper,
            "other_key_references": [n for n, _, _ in other_refs],
        }
    null = []
    for i in range(args.null_models):
        arch = ARCHS[(i + 1) % 2]
        seed = 1 + i // 2
        name = f"null-{arch}-s{seed}"
        _model(out, name, data, config(seed), arch, None)
        null.append(name)
    record = {
        "layout": LAYOUT,
        "training": training,
        "config": {k: v for k, v in vars(args).items() if k != "out"},
        "key_ratio": {"secret": SECRET_KEY_RATIO, "paper": PAPER_KEY_RATIO},
        "clean_references": [n for n, _, _ in clean],
        "schemes": schemes,
        "null": null,
    }
    write_json_atomic(manifest, record)
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-path", required=True, help="folder with the MNIST IDX files")
    parser.add_argument("--out", default=".bench-data/verify2", help="model cache folder")
    parser.add_argument("--schemes", nargs="+", choices=SCHEMES, default=list(SCHEMES))
    parser.add_argument("--clean-epochs", type=int, default=2)
    parser.add_argument("--embed-epochs", type=int, default=3)
    parser.add_argument("--num-keys", type=int, default=100)
    parser.add_argument(
        "--other-key-refs", type=int, default=2, help="other-key calibration references per scheme"
    )
    parser.add_argument(
        "--other-owners", type=int, default=2, help="innocent models with other secret keys"
    )
    parser.add_argument("--null-models", type=int, default=20)
    parser.add_argument(
        "--calibration-test", type=int, default=2000, help="test images for reference accuracy"
    )
    parser.add_argument(
        "--min-reference-accuracy",
        type=float,
        default=0.5,
        help="calibration refuses weaker references (the library's 0.5; lower only for smoke)",
    )
    parser.add_argument(
        "--reference-seeds", type=int, nargs="+", default=REFERENCE_SEEDS, help="clean references"
    )
    parser.add_argument(
        "--wm-arch", default="zhang_mnist", help="architecture of the owners' and paper models"
    )
    parser.add_argument(
        "--train-subset", type=int, default=0, help="train on this many images (0: all; smoke)"
    )
    parser.add_argument(
        "--test-subset", type=int, default=0, help="test on the first N images (0: all; smoke)"
    )
    args = parser.parse_args()
    record = build(args)
    print(
        json.dumps(
            {
                s: {
                    role: (
                        [{k: o[k] for k in ("p0", "kept")} for o in v]
                        if isinstance(v, list)
                        else {k: v[k] for k in ("p0", "kept")}
                    )
                    for role, v in row.items()
                    if role in ("owner", "others", "paper", "paper_rival")
                }
                for s, row in record["schemes"].items()
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
