"""The robustness matrix's report: summary per cell, the SoK removal criterion, rankings,
findings, and the files :func:`render_matrix` writes (Markdown, JSON, heat map, pruning
curves). The runner is :mod:`ownmark.matrix`."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from ownmark.attacks.defence import MAX_REFUSAL_RATE
from ownmark.fileio import atomic_path, write_json_atomic, write_text_atomic
from ownmark.matrix import NO_ATTACK, crashed_cells, parse_column
from ownmark.plots import plot_scheme_curves
from ownmark.steps import Steps

#: SoK criterion (Lukas et al. 2022): a removal succeeds only if clean accuracy drops by at
#: most this much (5 points) while verification no longer says "owned".
MAX_ACCURACY_DROP = 0.05


def removal_succeeded(cell: dict[str, Any], untouched: dict[str, Any] | None) -> bool:
    """Whether ``cell``'s attack removed the watermark by the SoK's criterion.

    Verification does not say "owned", clean accuracy is at most :data:`MAX_ACCURACY_DROP`
    below the untouched watermarked model's (same scheme and seed, same test images), and a
    defence refuses at most :data:`~ownmark.attacks.defence.MAX_REFUSAL_RATE` of normal
    queries. A crashed cell or one without its untouched counterpart never counts.
    """
    if "error" in cell or untouched is None or "error" in untouched:
        return False
    if cell["verdict"] == "owned" or cell.get("test_accuracy") is None:
        return False
    # The untouched model on the same test images the attacked one was judged on (the
    # second half when the attacker used the first), else on the whole test set.
    baseline = (cell.get("before") or {}).get("test_accuracy") or untouched["test_accuracy"]
    if baseline - cell["test_accuracy"] > MAX_ACCURACY_DROP:
        return False
    refused = cell.get("refusal_rate")
    return refused is None or refused <= MAX_REFUSAL_RATE


def summarise(cells: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    """Per scheme and attack column: mean watermark / test accuracy and refusal rate over the
    seeds, and how many seeds were owned, removed (SoK criterion) and crashed."""
    untouched = {(c["scheme"], c["seed"]): c for c in cells if c["attack"] == NO_ATTACK}
    summary: dict[str, dict[str, dict[str, Any]]] = {}
    for cell in cells:
        entry = summary.setdefault(cell["scheme"], {}).setdefault(
            cell["attack"], {"cells": [], "crashed": 0, "removed": 0, "owned": 0}
        )
        if "error" in cell:
            entry["crashed"] += 1
            continue
        entry["cells"].append(cell)
        entry["owned"] += cell["verdict"] == "owned"
        entry["removed"] += removal_succeeded(cell, untouched.get((cell["scheme"], cell["seed"])))
    for per_attack in summary.values():
        for entry in per_attack.values():
            group = entry.pop("cells")
            entry["seeds"] = len(group) + entry["crashed"]
            entry["watermark_accuracy"] = _mean([c["watermark_accuracy"] for c in group])
            entry["test_accuracy"] = _mean([c["test_accuracy"] for c in group])
            entry["key_queries"] = _mean([c.get("key_queries") for c in group])
            refusals = [c.get("refusal_rate") for c in group]
            if any(r is not None for r in refusals):
                entry["refusal_rate"] = _mean(refusals)
    return summary


def _cell_text(s: dict[str, Any]) -> str:
    if s["seeds"] == s["crashed"]:
        return f"crashed {s['crashed']}/{s['seeds']}"
    text = (
        f"{100 * s['watermark_accuracy']:.1f}% / {100 * s['test_accuracy']:.1f}% / "
        f"{s['owned']}/{s['seeds']} owned"
    )
    if s["removed"]:
        text += f" / **removed {s['removed']}/{s['seeds']}**"
    if s.get("refusal_rate") is not None:
        text += f" / refuses {100 * s['refusal_rate']:.1f}%"
    if s["crashed"]:
        text += f" / crashed {s['crashed']}"
    return text


def _rankings(
    summary: dict[str, dict[str, dict[str, Any]]], schemes: list[str], attacks: list[str]
) -> list[str]:
    """Which scheme survives the most attacks and which attack removes the most watermarks."""
    columns = [a for a in attacks if a != NO_ATTACK]
    if not columns:
        return []
    survived = {
        s: sum(summary[s].get(a, {}).get("removed", 0) == 0 for a in columns) for s in schemes
    }
    removed = {a: sum(summary[s].get(a, {}).get("removed", 0) for s in schemes) for a in columns}
    seeds = max((e["seeds"] for per in summary.values() for e in per.values()), default=0)
    best_scheme = max(survived.values())
    best_attack = max(removed.values())
    lines = [
        "",
        "## Who wins",
        "",
        f"- Survives the most attacks (no seed removed): "
        f"{', '.join(s for s in schemes if survived[s] == best_scheme)}, {best_scheme} of "
        f"{len(columns)} attack columns ("
        + ", ".join(f"{s} {survived[s]}" for s in schemes)
        + ").",
    ]
    if best_attack:
        lines.append(
            f"- Removes the most watermarks: "
            f"{', '.join(a for a in columns if removed[a] == best_attack)}, {best_attack} of "
            f"{len(schemes) * seeds} scheme x seed cells."
        )
    else:
        lines.append("- No attack removed any watermark by the SoK criterion.")
    winners = [a for a in columns if removed[a]]
    if winners:
        lines.append(
            "- Successful removals (scheme x seed cells): "
            + ", ".join(f"{a} {removed[a]}" for a in winners)
            + "."
        )
    return lines


#: Fields every attacked cell has; anything else at the top level is an attack's score.
_CELL_FIELDS = frozenset(
    {
        "after", "arch", "artifacts", "attack", "before", "calibration", "decoys",
        "evaluated_on", "findings", "key_commitment", "key_queries", "machine", "matches",
        "ownmark_version", "p0", "p_value", "refusal_rate", "requests", "scheme", "seed",
        "task", "test_accuracy", "torch_version", "verdict", "verified_through",
        "watermark_accuracy", "written",
    }
)  # fmt: skip
#: Findings worth a column in the summary (the JSON has them all).
_HEADLINE_FINDINGS = ("claim_rejected", "rejected_by", "flagged")


def _findings_lines(cells: list[dict[str, Any]]) -> list[str]:
    """A table of what attacks measured beyond accuracy (scores against the key, headline
    findings), per column and scheme: fractions averaged over seeds, whole numbers (labels,
    counts) shown when the seeds agree, yes/no as counts, lists as the union of their values."""
    grouped: dict[tuple[str, str], dict[str, list[Any]]] = {}
    for cell in cells:
        if "error" in cell or cell["attack"] == NO_ATTACK:
            continue
        values = {k: v for k, v in cell.items() if k not in _CELL_FIELDS}
        found = cell.get("findings") or {}
        for step in [found, *(v for v in found.values() if isinstance(v, dict))]:
            values |= {k: step[k] for k in _HEADLINE_FINDINGS if k in step}
        for name, value in values.items():
            if isinstance(value, bool | int | float | list) and value is not None:
                grouped.setdefault((cell["attack"], cell["scheme"]), {}).setdefault(
                    name, []
                ).append(value)
    if not grouped:
        return []
    lines = ["", "## What the attacks found", "", "| attack | scheme | findings |",
             "| --- | --- | --- |"]  # fmt: skip
    for (attack, scheme), values in grouped.items():
        parts = []
        for name, seen in values.items():
            if all(isinstance(v, bool) for v in seen):
                parts.append(f"{name} {sum(seen)}/{len(seen)}")
            elif all(isinstance(v, list) for v in seen):
                union = sorted({str(x) for v in seen for x in v})
                parts.append(f"{name} [{', '.join(union)}]")
            elif all(isinstance(v, int) for v in seen):  # labels and counts: not averaged
                parts.append(f"{name} {seen[0] if len(set(seen)) == 1 else 'varies'}")
            elif all(isinstance(v, int | float) for v in seen):
                parts.append(f"{name} {sum(seen) / len(seen):.3g}")
        lines.append(f"| {attack} | {scheme} | {'; '.join(parts)} |")
    return lines


def render_matrix(cells: list[dict[str, Any]], out_dir: str | Path) -> dict[str, Path]:
    """Write ``matrix.md``, ``matrix.json``, ``matrix.png`` (watermark accuracy heat map) and,
    when the columns prune at several rates, ``pruning.png``.

    Each table cell: mean watermark accuracy over seeds, mean clean test accuracy, how many
    seeds ownmark still calls "owned", how many the attack removed by the SoK criterion
    (:func:`removal_succeeded`), a defence's refusal rate on normal queries, crashes.
    """
    out = Path(out_dir)
    schemes = sorted({c["scheme"] for c in cells})
    settings = out / "config.json"
    config = json.loads(settings.read_text())["config"] if settings.is_file() else {}
    # The run's column order (untouched first), then any other columns the cells name.
    ordered = [NO_ATTACK, *config.get("attacks", ())]
    attacks = list(dict.fromkeys([*ordered, *(c["attack"] for c in cells)]))
    attacks = [a for a in attacks if any(c["attack"] == a for c in cells)]
    summary = summarise(cells)
    seeds = sorted({c["seed"] for c in cells})
    verified = "ownmark's HTTP server and verifier" if config.get("served", True) else "in process"
    lines = [
        f"Data set `{config.get('dataset', '?')}`, {config.get('epochs', '?')} epochs, seeds "
        f"{', '.join(map(str, seeds))}; each key calibrated on clean references (p0 per cell in "
        "`matrix.json`) and verified with its own plan (alpha 1e-6, budget 100 by default, "
        f"one decoy per key query) through {verified}.",
        "",
        "Each cell: watermark accuracy / clean test accuracy / seeds verified as owned; "
        "**removed** counts the seeds where the attack removed the watermark by the SoK "
        f"criterion (not owned, clean accuracy at most {100 * MAX_ACCURACY_DROP:.0f} points "
        "below the untouched model's, a defence refusing at most "
        f"{100 * MAX_REFUSAL_RATE:.0f}% of normal queries); `refuses` is a defence's refusal "
        "rate on normal test queries.",
        "",
        "| attack | " + " | ".join(schemes) + " |",
        "| --- |" + " ---: |" * len(schemes),
    ]
    for attack in attacks:
        row = [_cell_text(summary[s][attack]) if attack in summary[s] else "-" for s in schemes]
        lines.append(f"| {attack} | " + " | ".join(row) + " |")
    lines += ["", "Key queries ownmark's verifier sent before its verdict (mean over seeds):", ""]
    lines += ["| attack | " + " | ".join(schemes) + " |", "| --- |" + " ---: |" * len(schemes)]
    for attack in attacks:
        queries = [summary[s].get(attack, {}).get("key_queries", math.nan) for s in schemes]
        text = ["-" if math.isnan(q) else f"{q:.0f}" for q in queries]
        lines.append(f"| {attack} | " + " | ".join(text) + " |")
    lines += _rankings(summary, schemes, attacks)
    lines += _findings_lines(cells)
    crashed = crashed_cells(cells)
    if crashed:
        lines += ["", f"## Crashed cells ({len(crashed)}; a rerun retries them)", ""]
        lines += [
            f"- {c['scheme']} x {c['attack']} (seed {c['seed']}): {c['error']}" for c in crashed
        ]
    paths = {"markdown": out / "matrix.md", "json": out / "matrix.json", "png": out / "matrix.png"}
    write_text_atomic(paths["markdown"], "\n".join(lines) + "\n")
    write_json_atomic(paths["json"], {"summary": summary, "cells": cells})
    _heatmap(summary, schemes, attacks, paths["png"])
    curves = _rate_curves(summary, "prune", "rate")
    if curves:
        paths["pruning"] = plot_scheme_curves(curves, "pruning rate", out / "pruning.png")
    index = Steps(0)
    for path, what in (
        (paths["markdown"], "the table: watermark / test accuracy / seeds owned per cell"),
        (paths["json"], "the same summary plus every cell's full record"),
        (paths["png"], "heat map of watermark accuracy, with the owned counts"),
        (paths.get("pruning"), "watermark and clean accuracy against the pruning rate"),
        (out / "config.json", "the settings of the run (seeds, epochs, attacks, versions)"),
        (
            out / "cells",
            "one JSON record per scheme x attack x seed (a rerun skips these), "
            "images an attack made in a folder of the same name",
        ),
        (out / "models", "reference and watermarked models, reused by a rerun"),
        (out / "keys", "each scheme's key and its calibration, per seed"),
    ):
        if path is not None:
            index.wrote(path, what)
    paths["index"] = index.write_index(
        out, "ownmark matrix", "Written by `ownmark matrix`; rerun the command to resume it."
    )
    return paths


def _rate_curves(
    summary: dict[str, dict[str, dict[str, Any]]], attack: str, parameter: str
) -> dict[str, list[tuple[float, float, float]]]:
    """Per scheme, (value, watermark acc., test acc.) of the columns that run ``attack`` alone
    at several values of ``parameter``, plus the untouched model at 0."""
    curves: dict[str, list[tuple[float, float, float]]] = {}
    for scheme, per_attack in summary.items():
        points = []
        for label, entry in per_attack.items():
            if entry["seeds"] == entry["crashed"]:
                continue
            if label == NO_ATTACK:
                points.append((0.0, entry["watermark_accuracy"], entry["test_accuracy"]))
                continue
            steps = parse_column(label)
            if len(steps) == 1 and steps[0][0] == attack and parameter in steps[0][1]:
                value = float(steps[0][1][parameter])
                points.append((value, entry["watermark_accuracy"], entry["test_accuracy"]))
        if len(points) >= 3:
            curves[scheme] = points
    return curves


def _mean(values: list[float | None]) -> float:
    known = [v for v in values if v is not None]
    return sum(known) / len(known) if known else math.nan


def _heatmap(
    summary: dict[str, dict[str, dict[str, Any]]],
    schemes: list[str],
    attacks: list[str],
    path: Path,
) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    # One row per attack, one column per scheme: long attack lists stay readable.
    grid = [
        [summary[s].get(a, {}).get("watermark_accuracy", math.nan) for s in schemes]
        for a in attacks
    ]
    figure, axes = plt.subplots(figsize=(3.0 + 1.6 * len(schemes), 1.2 + 0.42 * len(attacks)))
    image = axes.imshow(grid, vmin=0.0, vmax=1.0, cmap="viridis", aspect="auto")
    axes.set_xticks(range(len(schemes)), schemes)
    axes.set_yticks(range(len(attacks)), attacks, fontsize=8)
    for i, attack in enumerate(attacks):
        for j, scheme in enumerate(schemes):
            s = summary[scheme].get(attack)
            if s is not None and s["seeds"] == s["crashed"]:
                axes.text(j, i, "crashed", ha="center", va="center", fontsize=7, color="red")
            elif s is not None:
                text = f"{100 * s['watermark_accuracy']:.0f}%, {s['owned']}/{s['seeds']} owned"
                colour = "white" if s["watermark_accuracy"] < 0.6 else "black"
                axes.text(j, i, text, ha="center", va="center", fontsize=7, color=colour)
    figure.colorbar(image, ax=axes, label="watermark accuracy")
    axes.set_title("watermark accuracy after each attack")
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=120)
    plt.close(figure)
