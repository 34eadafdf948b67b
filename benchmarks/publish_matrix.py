"""Copy a finished ``ownmark matrix`` run into ``benchmarks/results/`` with its provenance.

Writes ``NAME.md`` (the run's ``matrix.md`` under a header with the exact command, the
machine, the date and the wall time), ``NAME.json``, ``NAME.png`` (heat map),
``NAME_pruning.png`` (accuracy against pruning rate, when the run pruned at several rates)
and ``NAME_images/`` (the images attacks made for seed 0: model inversion, Neural Cleanse's
reversed triggers, forged keys), one grid per scheme and attack.

Usage::

    python benchmarks/publish_matrix.py --run /work/runs/matrix-mnist --name matrix_mnist \\
        --command "ownmark matrix --out /work/runs/matrix-mnist --config ..." --title "..."
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
from datetime import datetime
from pathlib import Path

import torch

from ownmark.fileio import write_json_atomic, write_text_atomic
from ownmark.matrix import render_matrix

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", type=Path, required=True, help="the matrix's --out folder")
    parser.add_argument("--name", required=True, help="file stem under benchmarks/results")
    parser.add_argument("--command", required=True, help="the command that produced the run")
    parser.add_argument("--title", required=True)
    parser.add_argument("--note", default="", help="a paragraph under the header")
    args = parser.parse_args()

    cells = [
        json.loads(p.read_text())
        for p in sorted((args.run / "cells").glob("*.json"))
        if not p.name.endswith(".error.json")
    ]
    cells += [json.loads(p.read_text()) for p in sorted((args.run / "cells").glob("*.error.json"))]
    paths = render_matrix(cells, args.run)
    written = sorted(c["written"] for c in cells if "written" in c)
    started = json.loads((args.run / "config.json").read_text()).get("written", "?")
    header = [
        f"# {args.title}",
        "",
        f"- command: `{args.command}`",
        f"- machine: {platform.platform()}, {os.cpu_count()} CPU cores (shared with other "
        f"jobs), no GPU; torch {torch.__version__}",
        f"- cells written from {written[0] if written else '?'} to "
        f"{written[-1] if written else '?'} (the last run started {started}; models and cells "
        "of earlier runs of the same command were reused)",
        f"- published {datetime.now().astimezone().isoformat(timespec='seconds')}",
        "",
    ]
    if args.note:
        header += [args.note, ""]
    body = paths["markdown"].read_text()
    write_text_atomic(RESULTS / f"{args.name}.md", "\n".join(header) + "\n" + body)
    write_json_atomic(RESULTS / f"{args.name}.json", json.loads(paths["json"].read_text()))
    shutil.copyfile(paths["png"], RESULTS / f"{args.name}.png")
    if "pruning" in paths:
        shutil.copyfile(paths["pruning"], RESULTS / f"{args.name}_pruning.png")
    images = RESULTS / f"{args.name}_images"
    for folder in sorted((args.run / "cells").iterdir()):
        if folder.is_dir() and folder.name.endswith("__s0"):
            scheme, attack, _ = folder.name.split("__")
            for png in sorted(folder.rglob("*.png")):
                images.mkdir(exist_ok=True)
                shutil.copyfile(png, images / f"{scheme}__{attack}__{png.stem}.png")
    print(f"wrote {RESULTS / args.name}.md and its files")


if __name__ == "__main__":
    main()
