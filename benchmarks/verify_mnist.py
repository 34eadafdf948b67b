"""Remote ownership verification on full MNIST, through a real HTTP server (issue 3's figures).

Needs the models of ``benchmarks/verify_models.py`` (trained once, cached). For each Zhang
scheme the owner's watermarked model is served with ``ownmark.serve`` (Open Inference Protocol
over HTTP on 127.0.0.1) and verified with :class:`~ownmark.verify.protocols.V2Suspect`, as
``ownmark serve`` + ``ownmark verify --url`` would. It reports

1. key queries needed to reach alpha = 1e-6 against the watermarked model (sequential rule,
   ``--orders`` random query orders; plus the same with one decoy per key query), next to the
   100 queries the anchors (seed 001) spend;
2. false claims against every innocent model: the clean null models (two architectures,
   seeds disjoint from the calibration references) and models watermarked with other keys,
   with the smallest p-value any of them reached over the whole 100-query budget;
3. the sequential rule's false-claim rate over ``--null-runs`` simulated null verifications
   at alpha = 1e-3, next to its exact value (dynamic programme) and alpha;
4. verification after 50% magnitude pruning and after fine-tuning (seed 001's attacks);
5. queries per second through HTTP vs. the same queries in-process, in one run.

Usage::

    python benchmarks/verify_mnist.py --data-path ../shared/data/mnist --models .bench-data/verify
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from ownmark.attacks import AttackData, FineTuning, MagnitudePruning
from ownmark.data import load_dataset
from ownmark.fileio import write_json_atomic, write_text_atomic
from ownmark.keys import KeySet, load_key
from ownmark.metrics import accuracy
from ownmark.models import Classifier, load_model
from ownmark.serve import BackgroundServer, ServeConfig, TorchBackend, create_app
from ownmark.verify import (
    BinomialTest,
    LocalModelSuspect,
    Suspect,
    VerificationResult,
    verify_ownership,
)
from ownmark.verify.protocols import V2Suspect
from ownmark.verify.stats import false_claim_probability, min_matches_for
from ownmark.workflows import run_record, verify_served

SCHEMES = ("content", "unrelated", "noise")
ALPHA = 1e-6
BUDGET = 100


def over_http(model: Classifier, name: str, key: KeySet, **options: Any) -> VerificationResult:
    """Serve ``model`` on 127.0.0.1 and verify it through the HTTP API (alpha, budget fixed)."""
    return verify_served(model, key, name=name, alpha=ALPHA, max_queries=BUDGET, **options)


def queries_needed(
    model: Classifier, key: KeySet, decoys: torch.Tensor, args: argparse.Namespace
) -> dict[str, Any]:
    runs, decoy_runs = [], []
    for seed in range(args.orders):
        runs.append(over_http(model, "owner", key, seed=seed))
    for seed in range(args.orders):
        decoy_runs.append(over_http(model, "owner", key, seed=seed, decoys=decoys, decoy_ratio=1.0))
    fixed = verify_ownership(
        key, LocalModelSuspect(model), alpha=ALPHA, max_queries=BUDGET, sequential=False, seed=0
    )
    queries = [r.queries for r in runs]
    return {
        "verdicts": sorted({r.verdict.value for r in runs + decoy_runs}),
        "queries": queries,
        "queries_mean": statistics.fmean(queries),
        "queries_max": max(queries),
        "requests_mean": statistics.fmean(r.requests for r in runs),
        "adjusted_p_value_max": max(r.adjusted_p_value for r in runs),
        "decoy_queries": [r.queries for r in decoy_runs],
        "decoy_images_sent": [r.queries + r.decoys for r in decoy_runs],
        "fixed_100": {"matches": fixed.matches, "queries": fixed.queries, "p_value": fixed.p_value},
        "watermark_accuracy": accuracy(model, key.images, key.labels),
    }


def innocents(models: Path, args: argparse.Namespace) -> dict[str, Path]:
    found = {p.stem: p for p in sorted(models.glob("null-*.safetensors"))}
    found.update({p.stem: p for p in sorted(models.glob("other-*.safetensors"))})
    return found


def false_claims(
    key: KeySet, scheme: str, models: Path, args: argparse.Namespace
) -> dict[str, Any]:
    rows = []
    candidates = innocents(models, args)
    # The owner's models for the other schemes are watermarked with other keys, too.
    candidates.update(
        {f"owner-{s}": models / f"owner-{s}.safetensors" for s in SCHEMES if s != scheme}
    )
    for name, path in candidates.items():
        model = load_model(path)
        sequential = over_http(model, "suspect", key, seed=0)
        fixed = verify_ownership(
            key, LocalModelSuspect(model), alpha=ALPHA, max_queries=BUDGET, sequential=False, seed=0
        )
        rows.append(
            {
                "model": name,
                "verdict": sequential.verdict.value,
                "queries": sequential.queries,
                "fixed_100_matches": fixed.matches,
                "fixed_100_p_value": fixed.p_value,
            }
        )
    claimed = [r for r in rows if r["verdict"] == "owned"]
    closest = min(rows, key=lambda r: r["fixed_100_p_value"])
    return {
        "queries_mean": statistics.fmean(r["queries"] for r in rows),
        "queries_max": max(r["queries"] for r in rows),
        "models": len(rows),
        "null_models": sum(r["model"].startswith("null-") for r in rows),
        "false_claims": len(claimed),
        "closest": closest,
        "rows": rows,
    }


def simulate(p0: float, args: argparse.Namespace) -> dict[str, Any]:
    """Null verifications with i.i.d. Bernoulli(p0) matches, looking after every query."""
    test = BinomialTest(p0=p0, alpha=args.sim_alpha, max_queries=BUDGET)
    critical = torch.tensor(
        [min_matches_for(n, p0, test.level) or n + 1 for n in range(1, BUDGET + 1)]
    )
    generator = torch.Generator().manual_seed(0)
    claims = 0
    for start in range(0, args.null_runs, 50_000):
        size = min(50_000, args.null_runs - start)
        counts = (torch.rand((size, BUDGET), generator=generator) < p0).cumsum(dim=1)
        claims += int((counts >= critical).any(dim=1).sum())
    return {
        "p0": p0,
        "alpha": args.sim_alpha,
        "runs": args.null_runs,
        "false_claims": claims,
        "rate": claims / args.null_runs,
        "exact_rate": false_claim_probability(test),
    }


def attacked(model: Classifier, key: KeySet, data: Any, args: argparse.Namespace) -> dict[str, Any]:
    first, second = data.test.halves()
    pruned = MagnitudePruning(0.5)(model)
    tuned = FineTuning(epochs=args.finetune_epochs, seed=0, progress=False)(
        model, AttackData(train=first, test=second)
    ).cpu()
    out = {}
    for name, attacked_model, test in (
        ("pruned50", pruned, data.test),
        ("finetuned", tuned, second),
    ):
        result = over_http(attacked_model, name, key, seed=0)
        out[name] = {
            "verdict": result.verdict.value,
            "queries": result.queries,
            "adjusted_p_value": result.adjusted_p_value,
            "test_accuracy": accuracy(attacked_model, test.images, test.labels),
            "watermark_accuracy": accuracy(attacked_model, key.images, key.labels),
        }
    return out


def throughput(model: Classifier, key: KeySet, args: argparse.Namespace) -> list[dict[str, Any]]:
    """The same image queries through HTTP and in-process, timed back to back."""
    rows = []
    images = key.images.repeat((args.qps_images + len(key) - 1) // len(key), 1, 1, 1)
    images = images[: args.qps_images]
    app = create_app(TorchBackend(model), ServeConfig(model_name="owner"))
    with BackgroundServer(app) as server, V2Suspect(server.url, "owner") as remote:
        local = LocalModelSuspect(model)
        for batch in (1, 32):
            timings = {}
            answers = {}
            suspect: Suspect
            for label, suspect in (("http", remote), ("in_process", local)):
                start = time.perf_counter()
                got: list[object] = []
                for i in range(0, len(images), batch):
                    got.extend(suspect.query(images[i : i + batch]))
                timings[label] = time.perf_counter() - start
                answers[label] = got
            rows.append(
                {
                    "batch": batch,
                    "images": len(images),
                    "http_qps": len(images) / timings["http"],
                    "in_process_qps": len(images) / timings["in_process"],
                    "ratio_in_process_over_http": timings["http"] / timings["in_process"],
                    "same_answers": answers["http"] == answers["in_process"],
                }
            )
    return rows


def markdown(record: dict[str, Any]) -> str:
    res = record["results"]
    lines = [
        "# Remote ownership verification on full MNIST (ours vs. the anchors)",
        "",
        f"- command: `{record['command']}`",
        f"- machine: {record['machine']}, {record['cpu_threads']} torch threads, no GPU; "
        f"torch {record['torch_version']}",
        f"- date: {record['written']}; total {record['total_seconds']:.0f} s",
        f"- models: {res['models']['config']}",
        f"- test: exact binomial, alpha {ALPHA:g}, budget {BUDGET} key queries, a look after "
        "each request, each look at alpha/budget (Bonferroni); p0 per key = the largest "
        "per-reference leave-one-out Clopper-Pearson bound (99.9%) on 4 clean references "
        "(zhang_mnist and lenet5, 2 seeds each); decoys are MNIST test images",
        "",
        "## 1. Key queries to reach alpha = 1e-6 against the watermarked model (HTTP)",
        "",
        "| scheme | p0 (calibrated) | key samples kept | queries: mean / max over orders "
        "(target <= 20; anchors 100) | requests | with 1 decoy per key query: key queries / "
        "images sent | verdicts | whole budget (--fixed): matches, p-value |",
        "| --- | ---: | ---: | ---: | ---: | --- | --- | --- |",
    ]
    for scheme in SCHEMES:
        s = res["schemes"][scheme]
        q = s["queries_needed"]
        lines.append(
            f"| {scheme} | {s['p0']:.4f} | {s['kept']} | {q['queries_mean']:.1f} / "
            f"{q['queries_max']} | {q['requests_mean']:.1f} | "
            f"{max(q['decoy_queries'])} / {max(q['decoy_images_sent'])} | "
            f"{', '.join(q['verdicts'])} | {q['fixed_100']['matches']}/"
            f"{q['fixed_100']['queries']}, {q['fixed_100']['p_value']:.1e} |"
        )
    lines += [
        "",
        "## 2. False claims against innocent models (HTTP, sequential rule)",
        "",
        "| key | innocent models (of them clean) | false claims | key queries to 'not owned': "
        "mean / max | closest innocent over the whole budget: model, matches, p-value | the "
        "owner's model, same budget: p-value |",
        "| --- | ---: | ---: | ---: | --- | ---: |",
    ]
    for scheme in SCHEMES:
        f = res["schemes"][scheme]["false_claims"]
        c = f["closest"]
        owner_p = res["schemes"][scheme]["queries_needed"]["fixed_100"]["p_value"]
        lines.append(
            f"| {scheme} | {f['models']} ({f['null_models']}) | {f['false_claims']} | "
            f"{f['queries_mean']:.1f} / {f['queries_max']} | {c['model']}, "
            f"{c['fixed_100_matches']} matches, {c['fixed_100_p_value']:.2e} | {owner_p:.1e} |"
        )
    lines += [
        "",
        "Innocent models: 10 zhang_mnist and 10 lenet5 clean models (seeds 1-10, disjoint from "
        "the references' 100-101), 3 models watermarked with another owner's keys (seed 1, "
        "digit 7 -> label 3, content text 'OWN'), and the owner's models for the other two "
        "schemes.",
    ]
    lines += [
        "",
        "## 3. The sequential rule's false-claim rate (simulated null runs)",
        "",
        "| p0 | alpha | runs | false claims | simulated rate | exact rate | <= alpha |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for sim in res["simulation"]:
        lines.append(
            f"| {sim['p0']:.4f} | {sim['alpha']:g} | {sim['runs']} | {sim['false_claims']} | "
            f"{sim['rate']:.2e} | {sim['exact_rate']:.2e} | "
            f"{'yes' if sim['rate'] <= sim['alpha'] else 'NO'} |"
        )
    lines += [
        "",
        "## 4. After seed 001's attacks (HTTP)",
        "",
        "| scheme | attack | test acc. | watermark acc. | verdict | key queries | adjusted p |",
        "| --- | --- | ---: | ---: | --- | ---: | ---: |",
    ]
    for scheme in SCHEMES:
        for name, a in res["schemes"][scheme]["attacks"].items():
            lines.append(
                f"| {scheme} | {name} | {100 * a['test_accuracy']:.2f}% | "
                f"{100 * a['watermark_accuracy']:.0f}% | {a['verdict']} | {a['queries']} | "
                f"{a['adjusted_p_value']:.1e} |"
            )
    lines += [
        "",
        "## 5. Queries per second: HTTP vs. in-process (same images, same run)",
        "",
        "| images per request | images | HTTP img/s | in-process img/s | in-process speed-up "
        "| same answers |",
        "| ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for t in res["throughput"]:
        lines.append(
            f"| {t['batch']} | {t['images']} | {t['http_qps']:.0f} | {t['in_process_qps']:.0f} "
            f"| {t['ratio_in_process_over_http']:.1f}x | {t['same_answers']} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-path", required=True, help="folder with the MNIST IDX files")
    parser.add_argument("--models", default=".bench-data/verify", help="verify_models.py output")
    parser.add_argument("--orders", type=int, default=10, help="random query orders per scheme")
    parser.add_argument("--null-runs", type=int, default=200_000)
    parser.add_argument("--sim-alpha", type=float, default=1e-3)
    parser.add_argument("--finetune-epochs", type=int, default=5)
    parser.add_argument("--qps-images", type=int, default=1024)
    parser.add_argument("--out-dir", default="benchmarks/results")
    args = parser.parse_args()
    start = time.perf_counter()
    models = Path(args.models)
    data = load_dataset("mnist", args.data_path)
    results: dict[str, Any] = {
        "models": json.loads((models / "models.json").read_text()),
        "schemes": {},
    }
    for scheme in SCHEMES:
        key = load_key(models / f"owner-{scheme}.key")
        owner = load_model(models / f"owner-{scheme}.safetensors")
        row: dict[str, Any] = {"p0": key.p0, "kept": len(key)}
        row["queries_needed"] = queries_needed(owner, key, data.test.images, args)
        row["false_claims"] = false_claims(key, scheme, models, args)
        row["attacks"] = attacked(owner, key, data, args)
        results["schemes"][scheme] = row
        print(
            f"{scheme}: queries {row['queries_needed']['queries']}, false claims "
            f"{row['false_claims']['false_claims']}/{row['false_claims']['models']}, attacks "
            f"{ {k: (v['verdict'], v['queries']) for k, v in row['attacks'].items()} }",
            file=sys.stderr,
            flush=True,
        )
    p0s = sorted({round(results["schemes"][s]["p0"], 6) for s in SCHEMES})
    results["simulation"] = [simulate(p0, args) for p0 in p0s]
    owner = load_model(models / "owner-content.safetensors")
    results["throughput"] = throughput(owner, load_key(models / "owner-content.key"), args)
    record = run_record(
        benchmark="verify_mnist",
        command="python " + " ".join(shlex.quote(a) for a in sys.argv),
        cpu_threads=torch.get_num_threads(),
        machine=platform.platform(),
        config=vars(args),
        results=results,
        total_seconds=time.perf_counter() - start,
    )
    out = Path(args.out_dir)
    write_json_atomic(out / "verify_mnist.json", record)
    write_text_atomic(out / "verify_mnist.md", markdown(record))
    print(markdown(record))


if __name__ == "__main__":
    main()
