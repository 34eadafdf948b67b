"""Train (once) and cache every model the remote-verification benchmark needs, on full MNIST.

``benchmarks/verify_mnist.py`` measures verification against these models; training them is
the slow part, so it lives here and skips every model whose file already exists:

- 4 clean **calibration references** (zhang_mnist and lenet5, 2 seeds each) that calibrate
  each key's p0 at key generation (``ownmark.calibrate``);
- for each Zhang scheme (content, unrelated, noise) a calibrated **key** and a **watermarked**
  zhang_mnist model embedding it;
- for each scheme a model watermarked with a **different key** (another seed, source and
  target class; content with another text): an innocent party's watermarked model;
- the **null set**: clean models, zhang_mnist and lenet5 with seeds disjoint from the
  references', that must never be claimed.

Usage::

    python benchmarks/verify_models.py --data-path ../shared/data/mnist --out .bench-data/verify
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from ownmark.calibrate import calibrate_key
from ownmark.data import DataSplits, load_dataset
from ownmark.fileio import write_json_atomic
from ownmark.keys import KeySet, load_key, save_key
from ownmark.models import Classifier, load_model
from ownmark.train import TrainConfig
from ownmark.workflows import make_key, train_model

SCHEMES = ("content", "unrelated", "noise")
REFERENCE_SEEDS = (100, 101)
REFERENCE_ARCHS = ("zhang_mnist", "lenet5")
# An innocent owner's key: another seed, source and target class (and text for content).
OTHER_KEY = {"seed": 1, "source_class": 7, "target_class": 3}


def _model(
    path: Path, data: DataSplits, config: TrainConfig, arch: str, key: KeySet | None, log: str
) -> Classifier:
    if path.is_file():
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
    print(
        f"{log}: test {result.test_accuracy:.4f}, wm {result.watermark_accuracy}, "
        f"{time.perf_counter() - start:.0f} s",
        file=sys.stderr,
        flush=True,
    )
    return model


def build(args: argparse.Namespace) -> dict[str, Any]:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = load_dataset("mnist", args.data_path)
    clean_config = TrainConfig(epochs=args.clean_epochs)
    references = []
    names = []
    for arch in REFERENCE_ARCHS:
        for seed in REFERENCE_SEEDS:
            config = TrainConfig(epochs=args.clean_epochs, seed=seed)
            name = f"reference-{arch}-s{seed}"
            references.append(_model(out / f"{name}.safetensors", data, config, arch, None, name))
            names.append(name)
    calibration: dict[str, Any] = {}
    for scheme in SCHEMES:
        for tag, params in (("owner", {"seed": 0}), ("other", OTHER_KEY)):
            key_path = out / f"{tag}-{scheme}.key"
            if key_path.is_file():
                key = load_key(key_path)
            else:
                extra = {"text": "OWN"} if scheme == "content" and tag == "other" else {}
                raw = make_key(
                    data, scheme, dataset="mnist", num_keys=args.num_keys, **params, **extra
                )
                key, report = calibrate_key(raw, references, names=names)
                save_key(key, key_path)
                write_json_atomic(key_path.with_suffix(".calibration.json"), report.as_dict())
                print(f"{tag} {scheme} key: p0 {key.p0:.4f}, kept {len(key)}", file=sys.stderr)
            calibration[f"{tag}-{scheme}"] = {"p0": key.p0, "kept": len(key)}
            config = TrainConfig(epochs=args.embed_epochs, seed=int(params["seed"]))
            _model(
                out / f"{tag}-{scheme}.safetensors",
                data,
                config,
                "zhang_mnist",
                key,
                f"{tag} {scheme} model",
            )
    for i in range(args.null_models):
        arch = REFERENCE_ARCHS[i % 2]
        seed = 1 + i // 2
        config = TrainConfig(epochs=args.clean_epochs, seed=seed)
        _model(
            out / f"null-{arch}-s{seed}.safetensors",
            data,
            config,
            arch,
            None,
            f"null {arch} s{seed}",
        )
    record = {"config": vars(args), "calibration": calibration, "clean_config": str(clean_config)}
    write_json_atomic(out / "models.json", record)
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-path", required=True, help="folder with the MNIST IDX files")
    parser.add_argument("--out", default=".bench-data/verify", help="model cache folder")
    parser.add_argument("--clean-epochs", type=int, default=2)
    parser.add_argument("--embed-epochs", type=int, default=3)
    parser.add_argument("--num-keys", type=int, default=100)
    parser.add_argument("--null-models", type=int, default=20)
    args = parser.parse_args()
    print(json.dumps(build(args)["calibration"], indent=1))


if __name__ == "__main__":
    main()
