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
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from ownmark.attacks import ATTACKS, Attack, create_attack
from ownmark.attacks.chain import CHAIN_SEPARATOR, ChainedAttack
from ownmark.attacks.defence import DefendedSuspect
from ownmark.calibrate import calibrate_key
from ownmark.data import DataSplits, load_dataset
from ownmark.errors import ConfigError
from ownmark.executors import Executor, TaskError, make_executor
from ownmark.fileio import write_json_atomic
from ownmark.keys import KeySet, load_key, save_key
from ownmark.models import Classifier, load_model
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


# The report lives in its own module; these names stay importable from here.
from ownmark.matrix_report import (  # noqa: E402
    MAX_ACCURACY_DROP,
    removal_succeeded,
    render_matrix,
    summarise,
)

__all__ = [
    "MAX_ACCURACY_DROP",
    "NO_ATTACK",
    "MatrixConfig",
    "build_column_attack",
    "crashed_cells",
    "expand_attack_specs",
    "parse_attack_spec",
    "parse_column",
    "removal_succeeded",
    "render_matrix",
    "run_matrix",
    "summarise",
]
