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
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from ownmark.attacks import ATTACKS, Attack, create_attack
from ownmark.attacks.chain import CHAIN_SEPARATOR, ChainedAttack
from ownmark.attacks.defence import MAX_REFUSAL_RATE, DefendedSuspect
from ownmark.calibrate import calibrate_key
from ownmark.data import DataSplits, load_dataset
from ownmark.errors import ConfigError
from ownmark.executors import Executor, TaskError, make_executor
from ownmark.fileio import atomic_path, write_json_atomic, write_text_atomic
from ownmark.keys import KeySet, load_key, save_key
from ownmark.models import Classifier, load_model
from ownmark.plots import plot_scheme_curves
from ownmark.registry import import_plugins, parse_sweep
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
    verify_served,
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
        served: verify every cell through ownmark's own HTTP server and verifier, as a
            thief's API would be queried (default True; False: in process, same answers).
        plugins: modules to import first, in this process and in every worker, that
            register further schemes or attacks (default none).
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
    served: bool = True
    plugins: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        import_plugins(self.plugins)  # their schemes and attacks are named below
        for name in self.schemes:
            SCHEMES.entry(name)  # unknown names fail here, before any work
        object.__setattr__(self, "attacks", expand_attack_specs(self.attacks))
        for spec in self.attacks:
            parse_column(spec)
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
    :func:`~ownmark.registry.parse_sweep`) expands into one column per value. A chain
    (``rtal:epochs=5>magnet``) is one column and cannot sweep.
    """
    columns: list[str] = []
    for spec in specs:
        if CHAIN_SEPARATOR in spec:
            if ".." in spec:
                raise ConfigError(f"attack chain {spec!r} cannot sweep a range; list the values")
            parse_column(spec)
            columns.append(spec)
            continue
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


def parse_column(label: str) -> list[tuple[str, dict[str, str]]]:
    """The attacks of a column, in order: ``rtal:epochs=5>magnet`` -> two, ``prune`` -> one."""
    steps = [parse_attack_spec(part.strip()) for part in label.split(CHAIN_SEPARATOR)]
    for name, params in steps:
        ATTACKS.parse(name, params)
    return steps


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-." else "_" for c in text)


def _reference_archs(config: MatrixConfig, data: DataSplits) -> tuple[str, ...]:
    if config.reference_archs:
        return config.reference_archs
    return ("zhang_mnist", "lenet5") if data.image_shape[0] == 1 else ("zhang_cifar10", "vgg16_bn")


@lru_cache(maxsize=2)
def _load_data(dataset: str, data_path: str | None) -> DataSplits:
    """The data set, loaded once per process (every task of a worker shares it)."""
    return load_dataset(dataset, data_path)


class _Paths:
    """Where a run keeps each file; every task derives the same names from the config."""

    def __init__(self, config: MatrixConfig, out: Path) -> None:
        self.config = config
        self.out = out
        self.data = _load_data(config.dataset, config.data_path)
        self.arch = config.arch or default_arch(self.data)
        self.reference_archs = _reference_archs(config, self.data)

    def reference(self, seed: int, index: int) -> Path:
        arch = self.reference_archs[index]
        return self.out / "models" / f"reference-{arch}-s{seed}-{index}.safetensors"

    def key(self, scheme: str, seed: int) -> Path:
        return self.out / "keys" / f"{scheme}-s{seed}.safetensors"

    def marked(self, scheme: str, seed: int) -> Path:
        return self.out / "models" / f"{scheme}-s{seed}.safetensors"

    def cell(self, scheme: str, label: str, seed: int) -> Path:
        return self.out / "cells" / f"{_slug(scheme)}__{_slug(label)}__s{seed}.json"

    def scheme_ready(self, scheme: str, seed: int) -> bool:
        key = self.key(scheme, seed)
        return (
            key.is_file()
            and key.with_suffix(".json").is_file()
            and self.marked(scheme, seed).is_file()
        )

    def train(self, seed: int, *, arch: str, key: KeySet | None, path: Path) -> Classifier:
        """Train and save a model (reference when ``key`` is None), unless already on disk."""
        if path.is_file():
            return load_model(path)
        ratio = self.config.key_ratio if key is not None else 0.15
        train_config = TrainConfig(
            epochs=self.config.epochs, seed=seed, key_ratio=ratio, device=self.config.device
        )
        model, _ = train_model(
            self.data, train_config, arch=arch, key=key, out=path, progress=False
        )
        return model


def _reference_task(config: MatrixConfig, out: Path, seed: int, index: int) -> str:
    """Train one clean reference (seeds far from the embedded models': independent of them)."""
    paths = _Paths(config, out)
    arch = paths.reference_archs[index]
    paths.train(seed + 10_000 + index, arch=arch, key=None, path=paths.reference(seed, index))
    return f"trained reference {arch} (seed {seed})"


def _scheme_task(config: MatrixConfig, out: Path, scheme: str, seed: int) -> str:
    """Make, calibrate and embed one scheme's key for one seed."""
    paths = _Paths(config, out)
    key_path = paths.key(scheme, seed)
    calibration_path = key_path.with_suffix(".json")
    if key_path.is_file() and calibration_path.is_file():
        key = load_key(key_path)
    else:
        references = [
            load_model(paths.reference(seed, i)) for i in range(len(paths.reference_archs))
        ]
        params = {"num_keys": config.num_keys, **config.scheme_params.get(scheme, {})}
        raw = make_key(paths.data, scheme, seed=seed, dataset=config.dataset, **params)
        key, calibration = calibrate_key(raw, references, test=paths.data.test, allow_weak=True)
        save_key(key, key_path)
        write_json_atomic(calibration_path, calibration.as_dict())
    paths.train(seed, arch=paths.arch, key=key, path=paths.marked(scheme, seed))
    return f"made, calibrated and embedded the {scheme} key (seed {seed})"


def _cell_task(
    config: MatrixConfig, out: Path, scheme: str, seed: int, label: str
) -> dict[str, Any]:
    """One cell's record: attack the watermarked model, measure it, verify it."""
    paths = _Paths(config, out)
    key_path = paths.key(scheme, seed)
    key = load_key(key_path)
    calibration = json.loads(key_path.with_suffix(".json").read_text())
    marked = load_model(paths.marked(scheme, seed))
    artifacts = paths.cell(scheme, label, seed).with_suffix("")
    cell = _run_cell(paths, marked, key, label, seed, artifacts)
    cell.update(scheme=scheme, attack=label, seed=seed, p0=key.p0, calibration=calibration)
    return cell


def build_column_attack(label: str, seed: int) -> Attack[Any]:
    """The attack of a matrix column: one registered attack, or a chain ``a:k=v>b``.

    Every attack with a ``seed`` parameter gets the matrix seed unless the column sets it.
    """
    attacks = []
    for name, params in parse_column(label):
        parsed = {"seed": str(seed), **params} if "seed" in ATTACKS.params(name) else params
        attacks.append(create_attack(name, progress=False, **parsed))
    return attacks[0] if len(attacks) == 1 else ChainedAttack(attacks, progress=False)


def _run_cell(
    paths: _Paths, marked: Classifier, key: KeySet, label: str, seed: int, artifacts: Path
) -> dict[str, Any]:
    """Attack the watermarked model (``label`` NO_ATTACK: leave it), measure it, verify it
    through ownmark's HTTP server (``served``) or in process."""
    data = paths.data
    if label == NO_ATTACK:
        attacked: Any = marked
        metrics = run_record(
            task="matrix cell",
            attack={"attack": NO_ATTACK},
            **evaluate(marked, test=data.test, key=key),
        )
    else:
        attack = build_column_attack(label, seed)
        attacked, metrics = attack_model(
            marked,
            attack,
            data=attacker_data(attack, data, marked),
            key=key,
            artifacts_dir=artifacts,
        )
        if not metrics["artifacts"]:
            metrics.pop("artifacts", None)
    if paths.config.served and isinstance(attacked, Classifier | DefendedSuspect):
        result = verify_served(attacked, key)
    else:
        suspect = LocalModelSuspect(attacked) if isinstance(attacked, Classifier) else attacked
        result = verify_ownership(key, suspect)
    return {
        **metrics,
        "verdict": result.verdict.value,
        "p_value": result.p_value,
        "key_queries": result.queries,
        "decoys": result.decoys,
        "requests": result.requests,
        "verified_through": result.protocol,
    }


def _failed(error: TaskError | str) -> dict[str, Any]:
    return error.as_dict() if isinstance(error, TaskError) else {"error": error, "traceback": ""}


def run_matrix(
    config: MatrixConfig,
    out_dir: str | Path,
    *,
    report: Report = silent,
    executor: Executor | None = None,
) -> list[dict[str, Any]]:
    """Run every task not already on disk under ``out_dir``; return all cells' records.

    Three rounds of independent tasks go to ``executor`` (default: one local worker
    process): clean references per seed; key, calibration and watermarked model per scheme
    and seed; then the cells. ``report`` receives one numbered line per task as it
    finishes, also for those an earlier run did. A task that fails does not stop the run:
    its cells get an ``error`` (and ``traceback``) instead of a verdict, are written to
    ``cells/*.error.json`` and are retried by the next run.
    """
    out = Path(out_dir)
    for folder in ("models", "keys", "cells"):
        (out / folder).mkdir(parents=True, exist_ok=True)
    paths = _Paths(config, out)
    write_json_atomic(
        out / "config.json", run_record(task="matrix", config=dataclasses.asdict(config))
    )
    schemes = config.scheme_names()
    labels = [NO_ATTACK, *config.attacks]
    references = [(s, i) for s in config.seeds for i in range(len(paths.reference_archs))]
    prepared = [(scheme, s) for s in config.seeds for scheme in schemes]
    cells_wanted = [(scheme, s, label) for scheme, s in prepared for label in labels]
    steps = Steps(len(references) + len(prepared) + len(cells_wanted), report)
    own = executor is None
    executor = executor or make_executor("local", plugins=config.plugins)
    try:
        broken_seeds: dict[int, str] = {}
        ref_todo: list[tuple[MatrixConfig, Path, int, int]] = []
        for seed, index in references:
            if paths.reference(seed, index).is_file():
                steps.step(f"{paths.reference(seed, index).name}: trained by an earlier run")
            else:
                ref_todo.append((config, out, seed, index))
        for i, outcome in executor.run(_reference_task, ref_todo):
            seed = ref_todo[i][2]
            if isinstance(outcome, TaskError):
                broken_seeds[seed] = f"a reference model (seed {seed}) failed: {outcome.message}"
                steps.step(f"FAILED: reference model (seed {seed}): {outcome.message}")
            else:
                steps.step(outcome)

        broken: dict[tuple[str, int], str] = {}
        scheme_todo: list[tuple[MatrixConfig, Path, str, int]] = []
        for scheme, seed in prepared:
            if seed in broken_seeds:
                broken[(scheme, seed)] = broken_seeds[seed]
                steps.step(f"{scheme} key (seed {seed}): skipped, {broken_seeds[seed]}")
            elif paths.scheme_ready(scheme, seed):
                steps.step(f"{scheme} key and model (seed {seed}): made by an earlier run")
            else:
                scheme_todo.append((config, out, scheme, seed))
        for i, outcome in executor.run(_scheme_task, scheme_todo):
            scheme, seed = scheme_todo[i][2], scheme_todo[i][3]
            if isinstance(outcome, TaskError):
                broken[(scheme, seed)] = f"the {scheme} key or model failed: {outcome.message}"
                steps.step(f"FAILED: {scheme} key and model (seed {seed}): {outcome.message}")
            else:
                steps.step(outcome)

        cells: dict[tuple[str, int, str], dict[str, Any]] = {}
        cell_todo: list[tuple[MatrixConfig, Path, str, int, str]] = []
        for scheme, seed, label in cells_wanted:
            path = paths.cell(scheme, label, seed)
            if path.is_file():
                steps.step(f"{scheme} x {label} (seed {seed}): done by an earlier run")
                cells[(scheme, seed, label)] = json.loads(path.read_text())
            elif (scheme, seed) in broken:
                cells[(scheme, seed, label)] = _crashed(
                    paths, scheme, seed, label, _failed(f"not run: {broken[(scheme, seed)]}")
                )
                steps.step(f"{scheme} x {label} (seed {seed}): not run")
            else:
                cell_todo.append((config, out, scheme, seed, label))
        for i, outcome in executor.run(_cell_task, cell_todo):
            scheme, seed, label = cell_todo[i][2], cell_todo[i][3], cell_todo[i][4]
            if isinstance(outcome, TaskError):
                cells[(scheme, seed, label)] = _crashed(
                    paths, scheme, seed, label, _failed(outcome)
                )
                steps.step(f"CRASHED: {scheme} x {label} (seed {seed}): {outcome.message}")
                continue
            path = paths.cell(scheme, label, seed)
            write_json_atomic(path, outcome)
            path.with_suffix(".error.json").unlink(missing_ok=True)
            cells[(scheme, seed, label)] = outcome
            steps.step(f"{scheme} x {label} (seed {seed}): {_cell_line(outcome)}")
    finally:
        if own:
            executor.close()
    return [cells[wanted] for wanted in cells_wanted]


def _crashed(
    paths: _Paths, scheme: str, seed: int, label: str, error: dict[str, str]
) -> dict[str, Any]:
    """A failed cell's record, also written to ``cells/*.error.json`` (a rerun retries it)."""
    record = {"scheme": scheme, "attack": label, "seed": seed, **error}
    write_json_atomic(paths.cell(scheme, label, seed).with_suffix(".error.json"), record)
    return record


def crashed_cells(cells: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The cells that failed (they carry ``error`` instead of a verdict)."""
    return [c for c in cells if "error" in c]


def _cell_line(cell: dict[str, Any]) -> str:
    parts = [cell["verdict"]]
    for name, label in (("watermark_accuracy", "wm"), ("test_accuracy", "test")):
        if cell.get(name) is not None:
            parts.append(f"{label} {100 * cell[name]:.1f}%")
    if cell.get("refusal_rate") is not None:
        parts.append(f"refuses {100 * cell['refusal_rate']:.1f}% of normal queries")
    return ", ".join(parts)


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
