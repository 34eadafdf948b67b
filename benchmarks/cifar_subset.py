"""A smaller CIFAR-10 tarball, in the official format, for a machine that only takes so much.

The lent GPU machine receives at most 64 MiB with each command, and the official CIFAR-10
tarball is 174 MB. This keeps the first ``--train-per-batch`` images of each of the five
training batches (they are already in random order) and the first ``--test`` test images,
and writes them as a ``.tar.xz`` that ``ownmark.data.load_dataset("cifar10", PATH)`` reads
like the original. The batches are read with ownmark's restricted unpickler.

Usage (the file the CIFAR-10 UDH benchmark ran on: 18,000 training, 5,000 test images,
57.5 MB)::

    python benchmarks/cifar_subset.py \\
        --source ../shared/data/cifar10/cifar-10-python-jpeg-derived.tar.gz \\
        --train-per-batch 3600 --test 5000 --out cifar10-18k-5k.tar.xz
"""

from __future__ import annotations

import argparse
import io
import lzma
import pickle
import tarfile
from pathlib import Path

from ownmark.data.cifar import RestrictedUnpickler
from ownmark.fileio import atomic_path

FOLDER = "cifar-10-batches-py"
TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--source", type=Path, required=True, help="official CIFAR-10 tarball")
    parser.add_argument("--train-per-batch", type=int, default=3600)
    parser.add_argument("--test", type=int, default=5000)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    keep = {name: args.train_per_batch for name in TRAIN} | {"test_batch": args.test}
    with (
        tarfile.open(args.source) as source,
        atomic_path(args.out) as tmp,
        lzma.open(tmp, "wb", preset=9) as raw,
        tarfile.open(fileobj=raw, mode="w") as out,
    ):
        for member in source.getmembers():
            name = Path(member.name).name
            if not member.isfile() or (name not in keep and name != "batches.meta"):
                continue
            payload = source.extractfile(member).read()  # type: ignore[union-attr]
            if name in keep:
                batch = RestrictedUnpickler(io.BytesIO(payload), encoding="bytes").load()
                for field in (b"data", b"labels", b"filenames"):
                    if field in batch:
                        batch[field] = batch[field][: keep[name]]
                payload = pickle.dumps(batch, protocol=2)
            info = tarfile.TarInfo(f"{FOLDER}/{name}")
            info.size = len(payload)
            out.addfile(info, io.BytesIO(payload))
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
