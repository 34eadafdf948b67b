"""The library calls behind every CLI command: train, embed, keygen, verify, attack.

Each function takes objects or paths, writes its outputs atomically, and returns what it
measured, so a user can do from Python everything the CLI does.
"""

from __future__ import annotations

import dataclasses
import platform
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ownmark import __version__
from ownmark.attacks import Attack, AttackData, MagnitudePruning, create_attack
from ownmark.attacks.defence import DefendedSuspect, refusal_rate
from ownmark.data import DataSplits, ImageDataset, stratified_subset
from ownmark.errors import ConfigError
from ownmark.fileio import write_json_atomic
from ownmark.keys import KeySet
from ownmark.metrics import accuracy, answer_accuracy
from ownmark.models import Classifier, ModelSpec, build_model, save_model
from ownmark.schemes import create_scheme
from ownmark.train import TrainConfig, TrainResult, check_checkpoint, fit, remove_checkpoint
from ownmark.verify import VerificationResult, verify_ownership
from ownmark.verify.suspects import LocalModelSuspect, Suspect


def default_arch(data: DataSplits) -> str:
    """The paper's network for the data's image shape: MNIST-like → zhang_mnist, else CIFAR."""
    return "zhang_mnist" if data.image_shape[0] == 1 else "zhang_cifar10"


def new_model(arch: str, data: DataSplits, seed: int = 0, extra_classes: int = 0) -> Classifier:
    """A freshly initialised classifier for ``data`` (initialisation seeded by ``seed``).

    ``extra_classes``: outputs beyond the data's classes (a key's scheme may add some).
    """
    channels, h, w = data.image_shape
    torch.manual_seed(seed)
    classes = data.num_classes + extra_classes
    return build_model(ModelSpec.with_defaults(arch, classes, channels, (h, w)))


def check_compatible(
    model: Classifier,
    *,
    key: KeySet | None = None,
    data: DataSplits | None = None,
    suspect: bool = False,
) -> None:
    """Raise ConfigError if the model, key and data disagree on classes or image shape.

    ``suspect``: the model is tested, not embedded into, so a key whose scheme adds classes
    (a new-label key, K+1) also accepts a model with the data's K classes: an innocent model
    that simply cannot answer the extra class.
    """
    spec = model.spec
    shape = (spec.in_channels, *spec.input_size)
    if key is not None and data is not None:
        _check_key_data(key, data)
    if key is not None:
        accepted = {key.model_classes, key.num_classes} if suspect else {key.model_classes}
        if spec.num_classes not in accepted:
            raise ConfigError(
                f"the key is for models with {key.model_classes} classes but the model has "
                f"{spec.num_classes}; use the key made for this model's data set"
            )
        if key.image_shape != shape:
            raise ConfigError(f"key images are {key.image_shape} but the model takes {shape}")
    if data is not None:
        added = key.extra_classes if key is not None else 0
        counts = {data.num_classes + added} | ({data.num_classes} if suspect else set())
        if spec.num_classes not in counts:
            raise ConfigError(
                f"the data set has {data.num_classes} classes but the model has "
                f"{spec.num_classes}; pick the data set the model was trained for"
            )
        if data.image_shape != shape:
            raise ConfigError(f"data images are {data.image_shape} but the model takes {shape}")


def _check_key_data(key: KeySet, data: DataSplits) -> None:
    """A key made for another data set: name it, and the options that load it."""
    if key.image_shape == data.image_shape and key.num_classes == data.num_classes:
        return
    made_for = key.dataset.split("/")[0] or "another data set"
    fix = (
        "drop --data (the key is for the built-in digits)"
        if made_for == "digits"
        else f"add --data {made_for} --data-path DIR"
    )
    c, h, w = key.image_shape
    raise ConfigError(
        f"this key was made for {made_for} ({c}x{h}x{w} images, {key.num_classes} classes) but "
        f"the data is {data.train.name} ({'x'.join(map(str, data.image_shape))}, "
        f"{data.num_classes} classes): {fix}"
    )


def run_record(**fields: Any) -> dict[str, Any]:
    """Common fields of every result file: version, time, machine, plus ``fields``."""
    return {
        "ownmark_version": __version__,
        "torch_version": torch.__version__,
        "written": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": platform.platform(),
        **fields,
    }


def subset_split(
    split: ImageDataset, size: int | None, *, option: str = "subset", seed: int = 0
) -> tuple[ImageDataset, dict[str, Any] | None]:
    """A seeded, stratified ``size``-row subset of ``split`` and its record for the metrics.

    ``size=None`` (default) keeps the whole split (record None). ``option`` names the
    argument in the error message (e.g. ``--train-subset``); ``seed`` (default 0) picks the
    rows, the same ones for every command (see :func:`~ownmark.data.stratified_subset`).
    """
    if size is None:
        return split, None
    if not 1 <= size <= len(split):
        raise ConfigError(
            f"{option} {size}: {split.name} has {len(split)} images; give 1 to {len(split)}"
        )
    record = {"size": size, "of": len(split), "seed": seed, "stratified": True}
    return stratified_subset(split, size, seed), record


def subset_data(
    data: DataSplits,
    *,
    train_subset: int | None = None,
    test_subset: int | None = None,
    seed: int = 0,
) -> tuple[DataSplits, dict[str, Any]]:
    """``data`` with smaller splits (None, the default: the whole split), and their records.

    The records (``train_subset``, ``test_subset``: size, full size, seed; None for a whole
    split) go into the metrics, so a result says what it was measured on.
    """
    train, train_record = subset_split(data.train, train_subset, option="--train-subset", seed=seed)
    test, test_record = subset_split(data.test, test_subset, option="--test-subset", seed=seed)
    return DataSplits(train=train, test=test), {
        "train_subset": train_record,
        "test_subset": test_record,
    }


def make_key(
    data: DataSplits,
    scheme: str,
    *,
    seed: int | None = None,
    dataset: str = "",
    **params: Any,
) -> KeySet:
    """Generate a key with a registered scheme (``params`` as in the scheme's Config).

    ``seed=None`` (default) makes the key's randomness a fresh secret; an integer seed makes
    it reproducible by anyone who knows it (experiments and tests only).
    """
    return create_scheme(scheme, **params).generate(data, seed=seed, dataset=dataset)


def train_model(
    data: DataSplits,
    config: TrainConfig,
    *,
    arch: str | None = None,
    key: KeySet | None = None,
    init: Classifier | None = None,
    out: str | Path | None = None,
    metrics_out: str | Path | None = None,
    checkpoint: str | Path | None = None,
    resume: bool = False,
    progress: bool = True,
    checkpoint_every: int | None = None,
    train_subset: int | None = None,
    test_subset: int | None = None,
    report: Callable[[str], None] | None = None,
) -> tuple[Classifier, TrainResult]:
    """Train a clean model (``key=None``) or embed ``key`` while training.

    Args:
        data: training and test data.
        config: hyper-parameters (seed included).
        arch: registered model name; default from the data's image shape.
        key: key to embed; None trains a clean baseline.
        init: start from this model (fine-tune) instead of a fresh one.
        out: model file to write (safetensors + metadata).
        metrics_out: metrics JSON to write (accuracies, epochs, seconds, seed, config, device,
            subsets).
        checkpoint: per-epoch checkpoint; removed after a successful run. It must not exist
            unless ``resume`` (checked before anything else).
        resume: continue from ``checkpoint``, which must exist (default False).
        progress: progress bar on stderr.
        checkpoint_every: also checkpoint every this many optimizer steps (default None:
            at the end of each epoch only).
        train_subset: train on this many training images, a seeded stratified subset (see
            :func:`subset_data`; default None: all).
        test_subset: measure on this many test images, likewise (default None: all).
        report: gets the line saying where a resumed run resumes (default None: logged).
    """
    check_checkpoint(checkpoint, resume)
    data, subsets = subset_data(data, train_subset=train_subset, test_subset=test_subset)
    if init is not None:
        model = init
    else:
        added = key.extra_classes if key is not None else 0
        model = new_model(arch or default_arch(data), data, config.seed, added)
    check_compatible(model, key=key, data=data)
    result = fit(
        model,
        data.train,
        config,
        test=data.test,
        key=key,
        checkpoint=checkpoint,
        resume=resume,
        progress=progress,
        description=(
            f"{'embed' if key is not None else 'train'} {model.spec.arch} seed {config.seed}"
        ),
        checkpoint_every=checkpoint_every,
        report=report,
    )
    model.cpu()
    metrics = run_record(
        task="embed" if key is not None else "train",
        arch=model.spec.arch,
        dataset=data.train.name,
        seed=config.seed,
        device=config.device,
        **subsets,
        config=dataclasses.asdict(config),
        key_commitment=key.commitment if key is not None else None,
        fine_tuned_from_model=init is not None,
        test_accuracy=result.test_accuracy,
        watermark_accuracy=result.watermark_accuracy,
        epochs=result.epochs,
        seconds=result.seconds,
        history=result.history,
    )
    if out is not None:
        extra = {"test_accuracy": f"{result.test_accuracy:.6f}", "seed": str(config.seed)}
        if key is not None:
            extra["key_commitment"] = key.commitment
        save_model(model, out, extra)
    if metrics_out is not None:
        write_json_atomic(metrics_out, metrics)
    remove_checkpoint(checkpoint)
    return model, result


def evaluate(
    model: nn.Module | Suspect,
    *,
    test: ImageDataset | None = None,
    key: KeySet | None = None,
) -> dict[str, float | None]:
    """Test accuracy on ``test`` and watermark accuracy on ``key``, of a model or a suspect.

    A suspect (e.g. a defended API an attack returned) is measured through its answers.
    """

    def score(images: torch.Tensor, labels: torch.Tensor) -> float:
        if isinstance(model, nn.Module):
            return accuracy(model, images, labels)
        return answer_accuracy(model, images, labels)

    measured: dict[str, float | None] = {
        "test_accuracy": score(test.images, test.labels) if test is not None else None,
        "watermark_accuracy": score(key.images, key.labels) if key is not None else None,
    }
    if isinstance(model, DefendedSuspect) and test is not None:
        measured["refusal_rate"] = refusal_rate(model, test.images)
    return measured


def attack_model(
    model: Classifier,
    attack: Attack[Any],
    *,
    data: AttackData | None = None,
    key: KeySet | None = None,
    out: str | Path | None = None,
    metrics_out: str | Path | None = None,
    before: dict[str, float | None] | None = None,
    artifacts_dir: str | Path | None = None,
) -> tuple[nn.Module | Suspect, dict[str, Any]]:
    """Apply ``attack`` to a copy of ``model``, measure it before and after, write results.

    Returns the attacked model, or the suspect API the attack put in front of it (a
    defence); ``out`` (a model file) is only possible for the former. ``before`` is the
    untouched model's :func:`evaluate` result, if the caller already has it. The metrics
    hold the attack's :meth:`~ownmark.attacks.Attack.findings`, its
    :meth:`~ownmark.attacks.Attack.score` against ``key``, and for a defence the fraction
    of normal test queries it refuses (``refusal_rate``). Images the attack produced are
    saved as PNG grids under ``artifacts_dir`` (``artifacts`` lists the files).
    """
    if key is not None:
        check_compatible(model, key=key, suspect=True)
    test = data.test if data is not None else None
    if before is None:
        before = evaluate(model, test=test, key=key)
    attacked = attack(model, data)
    if out is not None and not isinstance(attacked, Classifier):
        raise ConfigError(
            f"attack {attack.name!r} puts a defence in front of the model's API instead of "
            "changing the model: there is no model file to write; drop --out"
        )
    after = evaluate(attacked, test=test, key=key)
    metrics = run_record(
        task="attack",
        arch=model.spec.arch,
        attack=attack.config(),
        evaluated_on=test.name if test is not None else None,
        key_commitment=key.commitment if key is not None else None,
        before=before,
        after=after,
        test_accuracy=after["test_accuracy"],
        watermark_accuracy=after["watermark_accuracy"],
        refusal_rate=after.get("refusal_rate"),
        findings=attack.findings(),
        **(attack.score(key) if key is not None else {}),
    )
    if artifacts_dir is not None:
        metrics["artifacts"] = save_artifacts(attack.artifacts(), artifacts_dir)
    if out is not None and isinstance(attacked, Classifier):
        save_model(attacked, out, {"attack": attack.name})
    if metrics_out is not None:
        write_json_atomic(metrics_out, metrics)
    return attacked, metrics


def save_artifacts(images: dict[str, torch.Tensor], folder: str | Path) -> list[str]:
    """Save each uint8 image batch as ``folder/STEM.png`` (a grid, 8 per row); the paths."""
    from ownmark.preview import save_grid  # Pillow only; keeps plain attacks light

    written = []
    for stem, batch in images.items():
        path = Path(folder) / f"{stem}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        save_grid(batch, path)
        written.append(str(path))
    return written


def as_model(attacked: nn.Module | Suspect) -> Classifier:
    """The attacked model of a removal attack (a defence returns a suspect: ConfigError)."""
    if not isinstance(attacked, Classifier):
        raise ConfigError("the attack returned a defended API, not a model")
    return attacked


def attacker_data(attack: Attack[Any], data: DataSplits, model: Classifier) -> AttackData:
    """What the attacker holds, by the papers' protocol (seed 001, section 5.4).

    An attack that needs labelled or unlabelled data gets the first half of the test set and
    is judged on the second half, which it never saw; one that needs none is judged on the
    whole test set. Query access is a suspect in front of ``model`` (the stolen model's API).
    """
    if not attack.needs & {"train", "unlabelled"}:
        first, judged = None, data.test
    else:
        first, judged = data.test.halves()
    suspect = LocalModelSuspect(model) if "suspect" in attack.needs else None
    return AttackData(
        train=first if "train" in attack.needs else None,
        test=judged,
        unlabelled=first if "unlabelled" in attack.needs else None,
        suspect=suspect,
    )


def attack_sweep(
    model: Classifier,
    name: str,
    data: DataSplits,
    *,
    params: dict[str, Any] | None = None,
    sweep: tuple[str, list[Any]] | None = None,
    key: KeySet | None = None,
    out: str | Path | None = None,
    progress: bool = True,
    artifacts_dir: str | Path | None = None,
) -> list[dict[str, Any]]:
    """Metrics of the registered attack ``name`` at each value of one swept parameter.

    ``params`` are fixed parameters (strings are converted to their types), ``sweep`` is
    ``(parameter, values)``; the untouched model is measured once for the whole sweep.
    ``out``: the attacked model file of a single run. ``artifacts_dir``: where the images
    an attack makes are saved (one sub-folder per run of a sweep).
    """
    params = dict(params or {})
    runs = [params] if sweep is None else [{**params, sweep[0]: v} for v in sweep[1]]
    if out is not None and len(runs) != 1:
        raise ConfigError("one attacked model file for several runs: drop the file or the sweep")
    attacks = [create_attack(name, progress=progress, **run) for run in runs]  # checks first
    rows = []
    before: dict[str, float | None] | None = None
    for i, attack in enumerate(attacks):
        attacker = attacker_data(attack, data, model)
        if before is None:
            before = evaluate(model, test=attacker.test, key=key)
        folder = artifacts_dir
        if folder is not None and len(attacks) > 1:
            folder = Path(folder) / f"{sweep[0] if sweep else 'run'}-{i}"
        rows.append(
            attack_model(
                model, attack, data=attacker, key=key, before=before, out=out, artifacts_dir=folder
            )[1]
        )
    return rows


def prune_sweep(
    model: Classifier,
    rates: list[float],
    *,
    scope: str = "global",
    test: ImageDataset | None = None,
    key: KeySet | None = None,
) -> list[dict[str, Any]]:
    """Metrics of ``model`` pruned at each of ``rates`` (seed 001, Table 3).

    The untouched model is measured once for the whole sweep.
    """
    data = AttackData(test=test)
    before = evaluate(model, test=test, key=key)
    return [
        attack_model(
            model, MagnitudePruning(rate=rate, scope=scope), data=data, key=key, before=before
        )[1]
        for rate in rates
    ]


def verify_served(
    model: Classifier | DefendedSuspect,
    key: KeySet,
    *,
    name: str = "model",
    **options: Any,
) -> VerificationResult:
    """Serve ``model`` on 127.0.0.1 and verify it through its HTTP prediction API only.

    What ``ownmark serve`` plus ``ownmark verify --url`` do, in one process: the demo, the
    robustness matrix and the benchmarks use it. ``model`` may be a defended API an evasion
    attack returned (its transform and refusals then apply to every request).
    ``options`` are :class:`~ownmark.verify.VerifyConfig` fields.
    """
    # Imported here: the web stack is only needed when something is actually served.
    from ownmark.serve import BackgroundServer, ServeConfig, TorchBackend, create_app
    from ownmark.serve.backends import DefendedBackend
    from ownmark.verify.remote import V2Suspect

    backend = DefendedBackend(model) if isinstance(model, DefendedSuspect) else TorchBackend(model)
    app = create_app(backend, ServeConfig(model_name=name))
    with BackgroundServer(app) as server, V2Suspect(server.url, name) as suspect:
        return verify_ownership(key, suspect, **options)
