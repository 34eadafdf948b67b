"""``ownmark demo``: the whole flow on the built-in MNIST digits, in minutes on a laptop CPU.

Steps: train a clean model; generate a key; embed it by training a second model on data
mixed with the key; verify the watermarked model (owned) and the clean one (not owned);
prune the watermarked model by 50% and fine-tune it on half of the test set (seed 001's
attacks) and verify both again. Every file lands under one output folder.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ownmark.attacks import AttackData, FineTuning, MagnitudePruning
from ownmark.data import load_dataset
from ownmark.fileio import write_json_atomic, write_text_atomic
from ownmark.keys import save_key
from ownmark.preview import save_preview
from ownmark.train import TrainConfig
from ownmark.verify import LocalModelSuspect, Verdict, verify_ownership
from ownmark.workflows import attack_model, make_key, run_record, train_model


@dataclass(frozen=True)
class DemoRow:
    """One verified model of the demo."""

    model: str
    test_accuracy: float
    watermark_accuracy: float
    matches: int
    queries: int
    p_value: float
    verdict: str
    expected: str


@dataclass
class DemoSummary:
    """The demo's results; ``correct`` when every verdict is the expected one."""

    rows: list[DemoRow] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def correct(self) -> bool:
        return all(row.verdict == row.expected for row in self.rows)

    def table(self) -> str:
        """A Markdown table of the verified models."""
        lines = [
            "| model | test acc. | watermark acc. | matches | p-value | verdict | expected |",
            "| --- | ---: | ---: | ---: | ---: | --- | --- |",
        ]
        for r in self.rows:
            lines.append(
                f"| {r.model} | {100 * r.test_accuracy:.2f}% | {100 * r.watermark_accuracy:.2f}% "
                f"| {r.matches}/{r.queries} | {r.p_value:.2e} | {r.verdict} | {r.expected} |"
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
) -> DemoSummary:
    """Run the demo and write its files under ``out_dir``; see the module docstring.

    Args:
        out_dir: output folder (created).
        scheme: watermark scheme (default ``content``).
        epochs: training epochs of the clean and the watermarked model (default 8).
        seed: seeds data split, key, initialisation and training (default 0).
        progress: progress bars on stderr.
        finetune_epochs: epochs of the fine-tuning attack (default 5).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data = load_dataset("digits")
    config = TrainConfig(epochs=epochs, seed=seed)
    clean, clean_result = train_model(
        data,
        config,
        out=out / "clean.safetensors",
        metrics_out=out / "clean.json",
        progress=progress,
    )
    key = make_key(data, scheme, seed=seed, dataset="digits")
    save_key(key, out / "key.safetensors")
    save_preview(key, out / "key-preview.png")
    # A different initialisation seed: the watermarked model is not the clean one retrained.
    marked, marked_result = train_model(
        data,
        TrainConfig(epochs=epochs, seed=seed + 1),
        key=key,
        out=out / "watermarked.safetensors",
        metrics_out=out / "watermarked.json",
        progress=progress,
    )
    pruned, pruned_metrics = attack_model(
        marked,
        MagnitudePruning(0.5),
        data=AttackData(test=data.test),
        key=key,
        out=out / "watermarked-pruned50.safetensors",
        metrics_out=out / "pruned50.json",
    )
    first, second = data.test.halves()
    tuned, tuned_metrics = attack_model(
        marked,
        FineTuning(epochs=finetune_epochs, seed=seed, progress=progress),
        data=AttackData(train=first, test=second),
        key=key,
        out=out / "watermarked-finetuned.safetensors",
        metrics_out=out / "finetuned.json",
    )
    summary = DemoSummary(
        config=run_record(
            task="demo",
            scheme=scheme,
            epochs=epochs,
            seed=seed,
            finetune_epochs=finetune_epochs,
            key_commitment=key.commitment,
            clean_seconds=clean_result.seconds,
        )
    )
    # Test accuracies as training and the attacks measured them (the fine-tuned model on the
    # second half of the test set, which it was not tuned on).
    cases = [
        ("clean", clean, clean_result.test_accuracy, Verdict.NOT_OWNED),
        ("watermarked", marked, marked_result.test_accuracy, Verdict.OWNED),
        ("watermarked + 50% pruning", pruned, pruned_metrics["test_accuracy"], Verdict.OWNED),
        ("watermarked + fine-tuning", tuned, tuned_metrics["test_accuracy"], Verdict.OWNED),
    ]
    for name, model, test_accuracy, expected in cases:
        result = verify_ownership(key, LocalModelSuspect(model, name), seed=seed)
        assert test_accuracy is not None
        summary.rows.append(
            DemoRow(
                model=name,
                test_accuracy=test_accuracy,
                watermark_accuracy=result.watermark_accuracy,
                matches=result.matches,
                queries=result.queries,
                p_value=result.p_value,
                verdict=result.verdict.value,
                expected=expected.value,
            )
        )
    write_json_atomic(
        out / "summary.json",
        {
            **summary.config,
            "rows": [row.__dict__ for row in summary.rows],
            "correct": summary.correct,
        },
    )
    write_text_atomic(out / "summary.md", summary.table() + "\n")
    return summary


__all__ = ["DemoRow", "DemoSummary", "run_demo"]
