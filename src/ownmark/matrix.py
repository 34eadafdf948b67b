"""The robustness matrix: every scheme x every attack x seeds, with ownmark's own verdict.

For each seed the runner trains clean reference models once (they calibrate every key's
false-match rate p0), then per scheme makes a key, calibrates it and embeds it; per attack
it attacks the watermarked model (or puts the attack's defence in front of it) and verifies
the result as ownmark would, through the suspect interface. One JSON file per cell; cells
and trained models already on disk are not redone, so an interrupted run resumes where it
stopped. :func:`render_matrix` writes the table as Markdown and JSON and a heat-map PNG.

The attacker's data follows the papers (seed 001, section 5.4): the first half of the test
set to attack with, the second half to judge on (see :func:`ownmark.workflows.attacker_data`).

Example::

    config = MatrixConfig(attacks=("prune:rate=0.5", "finetune:epochs=2"), seeds=(0, 1))
    cells = run_matrix(config, "matrix-out")
    render_matrix(cells, "matrix-out")
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ownmark.attacks import ATTACKS, create_attack
from ownmark.calibrate import calibrate_key
from ownmark.data import DataSplits, load_dataset
from ownmark.errors import ConfigError
from ownmark.fileio import atomic_path, write_json_atomic, write_text_atomic
from ownmark.keys import KeySet, load_key, save_key
from ownmark.models import Classifier, load_model
from ownmark.registry import parse_sweep
from ownmark.schemes import SCHEMES
from ownmark.steps import Report, Steps, silent
from ownmark.train import TrainConfig
from ownmark.verify import verify_ownership
from ownmark.verify.suspects import LocalModelSuspect
from ownmark.workflows import (
    attack_model,
    attacker_data,
    default_arch,
    evaluate,
    make_key,
    run_record,
    train_model,
)

#: The column of the untouched watermarked model.
NO_ATTACK = "none"


@dataclass(frozen=True)
class MatrixConfig:
    """What the matrix runs.

    Attributes:
        schemes: registered scheme names (default: every registered scheme).
        attacks: ``NAME`` or ``NAME:k=v,k=v`` per column, e.g. ``prune:rate=0.9``; a range
            value makes one column per value (``prune:rate=0.1..0.9``). Default: pruning 50%
            and 90%, and fine-tuning for 5 epochs.
        seeds: one key, model and reference set per seed (default ``(0,)``).
        dataset: data set name (default ``digits``, built in); ``data_path`` its files.
        arch: the watermarked model's architecture (default: the paper's for the data).
        reference_archs: clean calibration models, two architectures at least (default:
            zhang_mnist and lenet5 for 1-channel data, zhang_cifar10 and vgg16_bn otherwise).
        epochs: training epochs of every model (default 4).
        key_ratio: key share of each embedding epoch (default 0.35, as the demo on the small
            built-in set; 0.15 suits full MNIST).
        num_keys: key samples per key (default 100).
        scheme_params: ``{scheme: {param: value}}`` passed to the schemes.
        device: torch device (default ``cpu``).
    """

    schemes: tuple[str, ...] = ()
    attacks: tuple[str, ...] = ("prune:rate=0.5", "prune:rate=0.9", "finetune:epochs=5")
    seeds: tuple[int, ...] = (0,)
    dataset: str = "digits"
    data_path: str | None = None
    arch: str | None = None
    reference_archs: tuple[str, ...] = ()
    epochs: int = 4
    key_ratio: float = 0.35
    num_keys: int = 100
    scheme_params: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    device: str = "cpu"

    def __post_init__(self) -> None:
        for name in self.schemes:
            SCHEMES.entry(name)  # unknown names fail here, before any work
        object.__setattr__(self, "attacks", expand_attack_specs(self.attacks))
        for spec in self.attacks:
            name, params = parse_attack_spec(spec)
            ATTACKS.parse(name, params)
        if not self.seeds or self.epochs < 1 or self.num_keys < 1:
            raise ConfigError("the matrix needs at least one seed, one epoch and one key sample")

    def scheme_names(self) -> list[str]:
        return list(self.schemes) or SCHEMES.names()

    @classmethod
    def from_file(cls, path: str | Path) -> MatrixConfig:
        """Read a JSON config (the fields above; lists for tuples)."""
        file = Path(path)
        try:
            raw = json.loads(file.read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read matrix config {file}: {exc}") from exc
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(raw) - fields)
        if unknown:
            raise ConfigError(f"{file}: unknown matrix settings {unknown}; known: {sorted(fields)}")
        values: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()}
        try:
            return cls(**values)
        except TypeError as exc:
            raise ConfigError(f"{file}: {exc}") from exc


def expand_attack_specs(specs: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """Columns with one swept value each: ``prune:rate=0.1..0.3`` -> three ``prune`` columns.

    A parameter value written as a range (``LOW..HIGH[:STEP]``, see
    :func:`~ownmark.registry.parse_sweep`) expands into one column per value.
    """
    columns: list[str] = []
    for spec in specs:
        name, params = parse_attack_spec(spec)
        swept = [k for k, v in params.items() if ".." in v]
        if len(swept) > 1:
            raise ConfigError(f"attack {spec!r} sweeps {swept}; sweep one parameter per column")
        if not swept:
            columns.append(spec)
            continue
        _, values = parse_sweep(f"{swept[0]}={params[swept[0]]}")
        for value in values:
            fixed = {**params, swept[0]: value}
            columns.append(f"{name}:" + ",".join(f"{k}={v}" for k, v in fixed.items()))
    return tuple(columns)


def parse_attack_spec(spec: str) -> tuple[str, dict[str, str]]:
    """``prune:rate=0.5,scope=layer`` -> ("prune", {"rate": "0.5", "scope": "layer"})."""
    name, _, rest = spec.partition(":")
    params: dict[str, str] = {}
    for pair in filter(None, rest.split(",")):
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"attack {spec!r}: parameters look like NAME:k=v,k=v")
        params[key.strip()] = value.strip()
    ATTACKS.entry(name)
    return name, params


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-." else "_" for c in text)


def _reference_archs(config: MatrixConfig, data: DataSplits) -> tuple[str, ...]:
    if config.reference_archs:
        return config.reference_archs
    return ("zhang_mnist", "lenet5") if data.image_shape[0] == 1 else ("zhang_cifar10", "vgg16_bn")


def _cached_model(
    path: Path, train: Callable[[], Classifier], allow_factory: str | None = None
) -> Classifier:
    """The model file at ``path`` if a previous run wrote it, else ``train()`` (which saves)."""
    if path.is_file():
        return load_model(path, allow_factory)
    return train()


class _Run:
    """One matrix run's state: data, folders, progress callback."""

    def __init__(self, config: MatrixConfig, out: Path, report: Report) -> None:
        self.config = config
        self.out = out
        self.data = load_dataset(config.dataset, config.data_path)
        self.arch = config.arch or default_arch(self.data)
        per_seed = len(_reference_archs(config, self.data)) + len(config.scheme_names()) * (
            2 + 1 + len(config.attacks)  # key, model, the untouched column, the attacks
        )
        self.steps = Steps(per_seed * len(config.seeds), report)
        self.report = self.steps.step

    def train(self, seed: int, *, arch: str, key: KeySet | None, path: Path) -> Classifier:
        ratio = self.config.key_ratio if key is not None else 0.15
        train_config = TrainConfig(
            epochs=self.config.epochs, seed=seed, key_ratio=ratio, device=self.config.device
        )

        def fit() -> Classifier:
            self.report(f"training {path.name} ({arch}, {self.config.epochs} epochs)")
            model, _ = train_model(
                self.data, train_config, arch=arch, key=key, out=path, progress=False
            )
            return model

        if path.is_file():
            self.report(f"{path.name}: trained by an earlier run")
        return _cached_model(path, fit)

    def references(self, seed: int) -> list[Classifier]:
        archs = _reference_archs(self.config, self.data)
        return [
            # Seeds far from the embedded models': the references stay independent of them.
            self.train(
                seed + 10_000 + i,
                arch=arch,
                key=None,
                path=self.out / "models" / f"reference-{arch}-s{seed}-{i}.safetensors",
            )
            for i, arch in enumerate(archs)
        ]

    def key(
        self, scheme: str, seed: int, references: list[Classifier]
    ) -> tuple[KeySet, dict[str, Any]]:
        path = self.out / "keys" / f"{scheme}-s{seed}.safetensors"
        calibration_path = path.with_suffix(".json")
        if path.is_file() and calibration_path.is_file():
            self.report(f"{path.name}: made and calibrated by an earlier run")
            return load_key(path), json.loads(calibration_path.read_text())
        self.report(f"making and calibrating the {scheme} key (seed {seed})")
        params = {"num_keys": self.config.num_keys, **self.config.scheme_params.get(scheme, {})}
        raw = make_key(self.data, scheme, seed=seed, dataset=self.config.dataset, **params)
        key, calibration = calibrate_key(raw, references, test=self.data.test, allow_weak=True)
        save_key(key, path)
        write_json_atomic(calibration_path, calibration.as_dict())
        return key, calibration.as_dict()


def run_matrix(
    config: MatrixConfig,
    out_dir: str | Path,
    *,
    report: Report = silent,
) -> list[dict[str, Any]]:
    """Run every cell not already on disk under ``out_dir``; return all cells' records.

    ``report`` receives one numbered line per step (training, calibrating, each cell), also
    for the steps an earlier run already did.
    """
    out = Path(out_dir)
    for folder in ("models", "keys", "cells"):
        (out / folder).mkdir(parents=True, exist_ok=True)
    run = _Run(config, out, report)
    write_json_atomic(
        out / "config.json", run_record(task="matrix", config=dataclasses.asdict(config))
    )
    columns: list[tuple[str, dict[str, str]]] = [(NO_ATTACK, {})]
    columns += [parse_attack_spec(spec) for spec in config.attacks]
    labels = [NO_ATTACK, *config.attacks]
    cells = []
    for seed in config.seeds:
        references = run.references(seed)
        for scheme in config.scheme_names():
            key, calibration = run.key(scheme, seed, references)
            marked = run.train(
                seed,
                arch=run.arch,
                key=key,
                path=out / "models" / f"{scheme}-s{seed}.safetensors",
            )
            for label, (name, params) in zip(labels, columns, strict=True):
                path = out / "cells" / f"{_slug(scheme)}__{_slug(label)}__s{seed}.json"
                if path.is_file():
                    run.report(f"{scheme} x {label} (seed {seed}): done by an earlier run")
                    cells.append(json.loads(path.read_text()))
                    continue
                run.report(f"{scheme} x {label} (seed {seed})")
                cell = _run_cell(run, marked, key, name, params, seed)
                cell.update(
                    scheme=scheme, attack=label, seed=seed, p0=key.p0, calibration=calibration
                )
                write_json_atomic(path, cell)
                cells.append(cell)
    return cells


def _run_cell(
    run: _Run, marked: Classifier, key: KeySet, name: str, params: dict[str, str], seed: int
) -> dict[str, Any]:
    """Attack the watermarked model (``name`` NO_ATTACK: leave it), measure it and verify it."""
    if name == NO_ATTACK:
        attacked: Any = marked
        metrics = run_record(
            task="matrix cell",
            attack={"attack": NO_ATTACK},
            **evaluate(marked, test=run.data.test, key=key),
        )
    else:
        parsed = {"seed": str(seed), **params} if "seed" in ATTACKS.params(name) else params
        attack = create_attack(name, progress=False, **parsed)
        attacked, metrics = attack_model(
            marked, attack, data=attacker_data(attack, run.data, marked), key=key
        )
    suspect = attacked if not isinstance(attacked, Classifier) else LocalModelSuspect(attacked)
    result = verify_ownership(key, suspect)
    return {
        **metrics,
        "verdict": result.verdict.value,
        "p_value": result.p_value,
        "key_queries": result.queries,
        "matches": result.matches,
    }


def render_matrix(cells: list[dict[str, Any]], out_dir: str | Path) -> dict[str, Path]:
    """Write ``matrix.md``, ``matrix.json`` and ``matrix.png`` (watermark accuracy heat map).

    Each table cell: mean watermark accuracy over seeds, mean clean test accuracy, and how
    many seeds ownmark still calls "owned".
    """
    out = Path(out_dir)
    schemes = sorted({c["scheme"] for c in cells})
    attacks = list(dict.fromkeys(c["attack"] for c in cells))
    summary: dict[str, dict[str, dict[str, Any]]] = {}
    for scheme in schemes:
        for attack in attacks:
            group = [c for c in cells if c["scheme"] == scheme and c["attack"] == attack]
            if group:
                summary.setdefault(scheme, {})[attack] = {
                    "watermark_accuracy": _mean([c["watermark_accuracy"] for c in group]),
                    "test_accuracy": _mean([c["test_accuracy"] for c in group]),
                    "owned": sum(c["verdict"] == "owned" for c in group),
                    "seeds": len(group),
                }
    settings = out / "config.json"
    config = json.loads(settings.read_text())["config"] if settings.is_file() else {}
    seeds = sorted({c["seed"] for c in cells})
    lines = [
        f"Data set `{config.get('dataset', '?')}`, {config.get('epochs', '?')} epochs, seeds "
        f"{', '.join(map(str, seeds))}; each key calibrated on clean references (p0 per cell in "
        "`matrix.json`) and verified with its own plan (alpha 1e-6, budget 100 by default).",
        "",
        "Each cell: watermark accuracy / clean test accuracy / seeds verified as owned.",
        "",
        "| scheme | " + " | ".join(attacks) + " |",
        "| --- |" + " ---: |" * len(attacks),
    ]
    for scheme in schemes:
        row = []
        for attack in attacks:
            s = summary[scheme].get(attack)
            row.append(
                "-"
                if s is None
                else f"{100 * s['watermark_accuracy']:.1f}% / {100 * s['test_accuracy']:.1f}% / "
                f"{s['owned']}/{s['seeds']} owned"
            )
        lines.append(f"| {scheme} | " + " | ".join(row) + " |")
    paths = {"markdown": out / "matrix.md", "json": out / "matrix.json", "png": out / "matrix.png"}
    write_text_atomic(paths["markdown"], "\n".join(lines) + "\n")
    write_json_atomic(paths["json"], {"summary": summary, "cells": cells})
    _heatmap(summary, schemes, attacks, paths["png"])
    index = Steps(0)
    for path, what in (
        (paths["markdown"], "the table: watermark / test accuracy / seeds owned per cell"),
        (paths["json"], "the same summary plus every cell's full record"),
        (paths["png"], "heat map of watermark accuracy, with the owned counts"),
        (out / "config.json", "the settings of the run (seeds, epochs, attacks, versions)"),
        (out / "cells", "one JSON record per scheme x attack x seed (a rerun skips these)"),
        (out / "models", "reference and watermarked models, reused by a rerun"),
        (out / "keys", "each scheme's key and its calibration, per seed"),
    ):
        index.wrote(path, what)
    paths["index"] = index.write_index(
        out, "ownmark matrix", "Written by `ownmark matrix`; rerun the command to resume it."
    )
    return paths


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

    grid = [
        [summary[s].get(a, {}).get("watermark_accuracy", math.nan) for a in attacks]
        for s in schemes
    ]
    figure, axes = plt.subplots(figsize=(1.6 + 1.5 * len(attacks), 1.0 + 0.6 * len(schemes)))
    image = axes.imshow(grid, vmin=0.0, vmax=1.0, cmap="viridis", aspect="auto")
    axes.set_xticks(range(len(attacks)), attacks, rotation=30, ha="right")
    axes.set_yticks(range(len(schemes)), schemes)
    for i, scheme in enumerate(schemes):
        for j, attack in enumerate(attacks):
            s = summary[scheme].get(attack)
            if s is not None:
                text = f"{100 * s['watermark_accuracy']:.0f}%\n{s['owned']}/{s['seeds']} owned"
                colour = "white" if s["watermark_accuracy"] < 0.6 else "black"
                axes.text(j, i, text, ha="center", va="center", fontsize=8, color=colour)
    figure.colorbar(image, ax=axes, label="watermark accuracy")
    axes.set_title("watermark accuracy after each attack")
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=120)
    plt.close(figure)
