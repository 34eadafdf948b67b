"""``ownmark demo``: the whole flow on the built-in MNIST digits, in about a minute on a CPU.

Steps: train a clean model (an innocent suspect), three clean reference models of two
architectures and two reference models carrying other owners' keys of the same scheme;
generate a secret key and calibrate its false-match rate p0 on the references; embed the key
by training a second model on data mixed with it, and bind that model's hash into the key;
prune the watermarked model by 50% and fine-tune it on half of the test set (seed 001's
attacks); train another owner's watermarked model (a second innocent suspect). Then serve
each suspect on a real HTTP server on 127.0.0.1 (Open Inference Protocol) and verify it
through the API only, with the key's decoys as control group, writing an evidence file per
suspect. Every file lands under one output folder.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ownmark.attacks import AttackData, FineTuning, MagnitudePruning
from ownmark.calibrate import calibrate_key
from ownmark.data import load_dataset
from ownmark.fileio import write_json_atomic, write_text_atomic
from ownmark.keys import save_key
from ownmark.metrics import accuracy
from ownmark.models import Classifier
from ownmark.preview import save_preview
from ownmark.steps import Report, Steps, silent
from ownmark.train import TrainConfig, TrainResult
from ownmark.verify import Verdict
from ownmark.verify.evidence import write_evidence
from ownmark.workflows import (
    as_model,
    attack_model,
    default_arch,
    make_key,
    run_record,
    train_model,
    verify_served,
)

#: Clean reference models for calibration: (architecture, seed offset). Their seeds differ
#: from the clean suspect's, so the suspect stays independent of the calibration.
REFERENCES = (("zhang_mnist", 10), ("lenet5", 10), ("lenet5", 11))
#: Reference models carrying other owners' keys: (architecture, seed offset).
OTHER_KEY_REFERENCES = (("zhang_mnist", 20), ("lenet5", 21))
#: Key share of each epoch. The built-in set has only 4,000 training digits, so a secret key
#: (a label per class) needs more repetitions per epoch than on the full MNIST: at 4 epochs
#: 0.15 embeds 85% of a content key, 0.35 all of it.
DEMO_KEY_RATIO = 0.35
#: Offset of the key seeds from the demo seed (the owner's key; other owners' keys follow it).
KEY_SEED_OFFSET = 1000


@dataclass(frozen=True)
class DemoRow:
    """One verified model of the demo."""

    model: str
    test_accuracy: float
    watermark_accuracy: float
    matches: int
    queries: int
    adjusted_p_value: float
    verdict: str
    expected: str
    evidence: str


@dataclass
class DemoSummary:
    """The demo's results; ``correct`` when every verdict is the expected one."""

    rows: list[DemoRow] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    #: every file the run wrote
    files: list[str] = field(default_factory=list)

    @property
    def correct(self) -> bool:
        return all(row.verdict == row.expected for row in self.rows)

    def header(self) -> str:
        """What the table is about: scheme, data set, key commitment, p0 and alpha."""
        c = self.config
        return (
            f"# ownmark demo\n\nScheme `{c.get('scheme')}` on the built-in digits "
            f"(`{c.get('dataset')}`), {c.get('epochs')} epochs, seed {c.get('seed')}. Key "
            f"commitment `{c.get('key_commitment')}`; p0 = {c.get('p0', 0):.4f} (calibrated on "
            f"clean and other-key references), alpha = {c.get('alpha')}.\n\n"
        )

    def table(self) -> str:
        """A Markdown table of the verified models."""
        lines = [
            "| suspect (over HTTP) | test acc. | watermark acc. | key queries matched/sent "
            "| adjusted p-value | verdict | expected |",
            "| --- | ---: | ---: | ---: | ---: | --- | --- |",
        ]
        for r in self.rows:
            lines.append(
                f"| {r.model} | {100 * r.test_accuracy:.2f}% | {100 * r.watermark_accuracy:.2f}% "
                f"| {r.matches}/{r.queries} | {r.adjusted_p_value:.2e} | {r.verdict} "
                f"| {r.expected} |"
            )
        return "\n".join(lines)


def run_demo(
    out_dir: str | Path,
    *,
    scheme: str = "content",
    epochs: int = 8,
    seed: int = 0,
    progress: bool = True,
    finetune_epochs: int = 5,
    report: Report = silent,
) -> DemoSummary:
    """Run the demo and write its files under ``out_dir``; see the module docstring.

    Args:
        out_dir: output folder (created).
        scheme: watermark scheme (default ``content``).
        epochs: training epochs of the clean and the watermarked model (default 8).
        seed: seeds data split, key, initialisation and training (default 0).
        progress: progress bars on stderr.
        finetune_epochs: epochs of the fine-tuning attack (default 5).
        report: receives a numbered line per step (default: nothing; the CLI prints them).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    steps = Steps(8 + len(REFERENCES) + len(OTHER_KEY_REFERENCES), report)
    data = load_dataset("digits")

    def train(
        what: str, name: str, config: TrainConfig, *, arch: str | None = None, key: Any = None
    ) -> tuple[Classifier, TrainResult]:
        model_arch = arch or default_arch(data)
        steps.step(f"training {what} ({model_arch}, seed {config.seed}, {config.epochs} epochs)")
        model, result = train_model(
            data,
            config,
            arch=model_arch,
            key=key,
            out=steps.wrote(out / f"{name}.safetensors", f"{what}: model file"),
            metrics_out=steps.wrote(out / f"{name}.json", f"{what}: training metrics"),
            progress=progress,
        )
        return model, result

    config = TrainConfig(epochs=epochs, seed=seed)
    clean, clean_result = train("the clean model (an innocent suspect)", "clean", config)
    references = [
        train(
            f"clean reference {arch}",
            f"reference-{arch}-s{seed + offset}",
            TrainConfig(epochs=epochs, seed=seed + offset),
            arch=arch,
        )[0]
        for arch, offset in REFERENCES
    ]
    # Other owners, who know the scheme and its defaults but not our secret. The demo's keys
    # come from its seed so that its table is the same on every run; a real owner's key
    # draws a secret seed (``make_key`` without ``seed``).
    other_keys = [
        make_key(data, scheme, seed=seed + KEY_SEED_OFFSET + i, dataset="digits")
        for i in range(1, len(OTHER_KEY_REFERENCES) + 1)
    ]
    references += [
        train(
            f"reference {arch} carrying another owner's key",
            f"reference-otherkey-{arch}-s{seed + offset}",
            TrainConfig(epochs=epochs, seed=seed + offset, key_ratio=DEMO_KEY_RATIO),
            arch=arch,
            key=other,
        )[0]
        for (arch, offset), other in zip(OTHER_KEY_REFERENCES, other_keys, strict=True)
    ]
    groups = ["clean"] * len(REFERENCES) + ["other-key"] * len(OTHER_KEY_REFERENCES)
    steps.step(f"making a {scheme} key and calibrating its p0 on {len(references)} references")
    raw_key = make_key(data, scheme, seed=seed + KEY_SEED_OFFSET, dataset="digits")
    key, calibration = calibrate_key(raw_key, references, groups=groups, test=data.test)
    write_json_atomic(
        steps.wrote(out / "calibration.json", "how p0 was calibrated: each reference's matches"),
        calibration.as_dict(),
    )
    # A different initialisation seed: the watermarked model is not the clean one retrained.
    marked, marked_result = train(
        "the watermarked model (the owner's release)",
        "watermarked",
        TrainConfig(epochs=epochs, seed=seed + 1, key_ratio=DEMO_KEY_RATIO),
        key=key,
    )
    # The key's commitment binds the released model (time-stamp it to date both).
    key = key.bound_to_model(out / "watermarked.safetensors")
    save_key(key, steps.wrote(out / "key.safetensors", "the owner's secret key (keep it private)"))
    save_preview(key, steps.wrote(out / "key-preview.png", "originals and trigger images"))
    other_owner, other_result = train(
        "another owner's watermarked model (an innocent suspect)",
        "other-owner",
        TrainConfig(epochs=epochs, seed=seed + 2, key_ratio=DEMO_KEY_RATIO),
        key=make_key(data, scheme, seed=seed + KEY_SEED_OFFSET - 1, dataset="digits"),
    )
    steps.step("pruning 50% of the watermarked model's weights")
    pruned_api, pruned_metrics = attack_model(
        marked,
        MagnitudePruning(rate=0.5),
        data=AttackData(test=data.test),
        key=key,
        out=steps.wrote(out / "watermarked-pruned50.safetensors", "pruned 50%: model file"),
        metrics_out=steps.wrote(out / "watermarked-pruned50.json", "pruned 50%: metrics"),
    )
    steps.step(f"fine-tuning the watermarked model for {finetune_epochs} epochs")
    first, second = data.test.halves()
    tuned_api, tuned_metrics = attack_model(
        marked,
        FineTuning(epochs=finetune_epochs, seed=seed, progress=progress),
        data=AttackData(train=first, test=second),
        key=key,
        out=steps.wrote(out / "watermarked-finetuned.safetensors", "fine-tuned: model file"),
        metrics_out=steps.wrote(out / "watermarked-finetuned.json", "fine-tuned: metrics"),
    )
    pruned, tuned = as_model(pruned_api), as_model(tuned_api)
    summary = DemoSummary(
        config=run_record(
            task="demo",
            scheme=scheme,
            dataset="digits",
            epochs=epochs,
            seed=seed,
            finetune_epochs=finetune_epochs,
            key_commitment=key.commitment,
            p0=key.p0,
            alpha=key.alpha,
            calibration=calibration.as_dict(),
            clean_seconds=clean_result.seconds,
        )
    )
    # Test accuracies as training and the attacks measured them (the fine-tuned model on the
    # second half of the test set, which it was not tuned on).
    cases = [
        ("clean", clean, clean_result.test_accuracy, Verdict.NOT_OWNED),
        ("other-owner", other_owner, other_result.test_accuracy, Verdict.NOT_OWNED),
        ("watermarked", marked, marked_result.test_accuracy, Verdict.OWNED),
        ("pruned50", pruned, pruned_metrics["test_accuracy"], Verdict.OWNED),
        ("finetuned", tuned, tuned_metrics["test_accuracy"], Verdict.OWNED),
    ]
    steps.step(f"serving each of the {len(cases)} suspects over HTTP and verifying it")
    for name, model, test_accuracy, expected in cases:
        result = verify_served(model, key, name=name)
        report(f"      {name}: {result.verdict.value} ({result.matches}/{result.queries} matched)")
        evidence, evidence_report = write_evidence(
            result, key, out / "evidence" / f"{name}.evidence.json"
        )
        steps.wrote(evidence, f"evidence of the verification of {name} (check it with the key)")
        steps.wrote(evidence_report, f"the same evidence as a readable report ({name})")
        assert test_accuracy is not None
        summary.rows.append(
            DemoRow(
                model=name,
                test_accuracy=test_accuracy,
                # Over the whole key (the verification stops after a few queries).
                watermark_accuracy=accuracy(model, key.images, key.labels),
                matches=result.matches,
                queries=result.queries,
                adjusted_p_value=result.adjusted_p_value,
                verdict=result.verdict.value,
                expected=expected.value,
                evidence=str(evidence),
            )
        )
    steps.step("writing the summary and the index")
    write_json_atomic(
        steps.wrote(out / "summary.json", "the results table and the run's settings (JSON)"),
        {
            **summary.config,
            "rows": [row.__dict__ for row in summary.rows],
            "correct": summary.correct,
        },
    )
    write_text_atomic(
        steps.wrote(out / "summary.md", "the results table with scheme, key, p0 and alpha"),
        summary.header() + summary.table() + "\n",
    )
    steps.write_index(
        out,
        "ownmark demo",
        f"Written by `ownmark demo` ({summary.config['written']}). A model file and its metrics "
        "share a name; `evidence/` holds one evidence file and report per verified suspect.",
    )
    summary.files = sorted(str(p) for p in steps.files)
    return summary


__all__ = ["DemoRow", "DemoSummary", "run_demo"]
