"""Remote ownership verification on full MNIST, through a real HTTP server (issues 3 and 7).

Needs the models and keys of ``benchmarks/verify_models.py`` (trained once, cached; layout 2:
secret multi-class keys with their decoys, calibrated on clean and other-key references).
For each Zhang scheme the owner's watermarked model is served with ``ownmark.serve`` (Open
Inference Protocol over HTTP on 127.0.0.1) and verified with
:class:`~ownmark.verify.remote.V2Suspect`, as ``ownmark serve`` + ``ownmark verify --url``
would, with the verifier's defaults: alpha and budget from the key's plan (1e-6, 100 key
queries), 16 images per request, at least one of the key's decoys per key query. It reports

1. key queries needed to reach alpha against the watermarked model: with the owner's key
   (and the same without the decoy control group, ``decoy_ratio=0``), over several secrets
   (each other owner's key against its own model), and over ``--orders`` other commitments
   of the owner's key (see below); next to the 100 queries the anchors (seed 001) spend;
2. false claims of the owner's key against every innocent model: the clean null models
   (two architectures, seeds disjoint from the calibration references), the models
   watermarked by other owners with their own secret keys (every scheme), the owner's models
   for the other schemes and the models watermarked with the paper's public setting, with
   the smallest p-value any of them reached over the whole budget; and the other owners'
   keys against the owner's model;
3. the "before" case: a key with Zhang et al.'s public setting (digit 1 -> 0, "TEST" at the
   bottom; unrelated: letters -> 0) on a model embedding it, and a second party's key with
   the same public setting against that model, with and without decoys: the false claim
   issue 7 removes by making keys secret (decoys are not meant to catch it: such a model
   still classifies ordinary images of the source class right);
4. the sequential rule's false-claim rate over ``--null-runs`` simulated null verifications
   at ``--sim-alpha``, next to its exact value (dynamic programme) and alpha;
5. verification after 50% magnitude pruning and after fine-tuning (seed 001's attacks);
6. images per second through HTTP vs. the same images in-process, in one run.

What changed with issue 7, and why the figures are measured differently:

- The query order and the decoys' places are no longer a verifier's choice (there is no
  ``seed``): they follow from the key's commitment, so a verifier cannot shop for a lucky
  order. The old "10 random orders" therefore become (a) several keys with different
  secrets, each on its own model, and (b) ``--orders`` copies of the owner's key with a
  fresh salt: a new commitment, hence another fixed order and other decoy places, over the
  same key samples and model. (b) is the spread over the orders the owner could have
  committed to; it is not something a verifier can choose once the key is published.
- Decoys come from the key (its control group: ordinary training images of its source
  classes), not from the MNIST test set, and are on by default; every request holds 16
  images, so "images sent" is 16 per request.
- The calibration references (clean and other-key) are not among the innocent models: the
  key was screened on them, so they match it on nothing by construction.

Usage::

    python benchmarks/verify_mnist.py --data-path ../shared/data/mnist --models .bench-data/verify2
    # smoke test on verify_models.py's smoke folder (results to /tmp):
    python benchmarks/verify_mnist.py --data-path ../shared/data/mnist \\
        --models /tmp/verify2-smoke --orders 2 --null-runs 20000 --finetune-epochs 1 \\
        --qps-images 64 --test-subset 1000 --out-dir /tmp/verify2-smoke-results
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ownmark.attacks import AttackData, FineTuning, MagnitudePruning
from ownmark.data import DataSplits, load_dataset
from ownmark.fileio import write_json_atomic, write_text_atomic
from ownmark.keys import KeySet, load_key
from ownmark.metrics import accuracy, predict
from ownmark.models import Classifier, load_model
from ownmark.serve import BackgroundServer, ServeConfig, TorchBackend, create_app
from ownmark.verify import (
    BinomialTest,
    LocalModelSuspect,
    Suspect,
    VerificationResult,
    VerifyConfig,
    binomial_tail,
)
from ownmark.verify.remote import V2Suspect
from ownmark.verify.stats import false_claim_probability, min_matches_for
from ownmark.verify.verifier import query_order
from ownmark.workflows import run_record, verify_served

SCHEMES = ("content", "unrelated", "noise")
#: The cache layout verify_models.py writes since issue 7 (version-2 keys).
LAYOUT = 2
ANCHOR_QUERIES = 100


class Cache:
    """The models and keys of a verify_models.py folder, each loaded once."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.models: dict[str, Classifier] = {}
        self.keys: dict[str, KeySet] = {}

    def model(self, name: str) -> Classifier:
        if name not in self.models:
            self.models[name] = load_model(self.root / f"{name}.safetensors")
        return self.models[name]

    def key(self, file: str) -> KeySet:
        if file not in self.keys:
            self.keys[file] = load_key(self.root / file)
        return self.keys[file]


def outcome(result: VerificationResult) -> dict[str, Any]:
    control = result.control
    return {
        "verdict": result.verdict.value,
        "matches": result.matches,
        "queries": result.queries,
        "requests": result.requests,
        "decoys": result.decoys,
        "images_sent": result.queries + result.decoys,
        "adjusted_p_value": result.adjusted_p_value,
        "stop_reason": result.stop_reason,
        "alpha": result.alpha,
        "budget": result.budget,
        "control_passed": None if control is None else control.passed,
        "decoy_accuracy": None if control is None else control.accuracy,
    }


def over_http(model: Classifier, name: str, key: KeySet, **options: Any) -> dict[str, Any]:
    """Serve ``model`` on 127.0.0.1 and verify it through the HTTP API (the key's plan)."""
    return outcome(verify_served(model, key, name=name, **options))


def whole_budget(model: Classifier, key: KeySet) -> dict[str, Any]:
    """How close a model came: its matches on the whole budget's key samples (the key's plan,
    in the committed order), in-process, with the one-look binomial p-value at the key's p0.

    Computed directly: ``verify_ownership(..., sequential=False)`` stops as soon as "owned"
    is out of reach, so on an innocent model it does not spend the whole budget.
    """
    budget = min(key.max_queries, len(key))
    rows = torch.tensor(query_order(key, budget))
    matches = int((predict(model, key.images[rows]) == key.labels[rows]).sum())
    return {
        "matches": matches,
        "queries": budget,
        "p_value": binomial_tail(matches, budget, key.p0),
    }


def resalted(key: KeySet, i: int) -> KeySet:
    """The key with another salt: a new commitment, hence another order and decoy places."""
    salt = hashlib.sha256(f"verify_mnist-order-{i}".encode()).hexdigest()[:32]
    return dataclasses.replace(key, salt=salt, timestamp_token="")


def queries_needed(cache: Cache, row: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    key = cache.key(row["owner"]["key"])
    model = cache.model(row["owner"]["model"])
    committed = over_http(model, "owner", key)
    no_control = over_http(model, "owner", key, decoy_ratio=0.0)
    orders = [over_http(model, "owner", resalted(key, i)) for i in range(args.orders)]
    secrets_ = [
        {
            "key": other["key"],
            "p0": cache.key(other["key"]).p0,
            "kept": len(cache.key(other["key"])),
            **over_http(cache.model(other["model"]), other["model"], cache.key(other["key"])),
        }
        for other in row["others"]
    ]
    runs = [committed, *orders, *secrets_]
    queries = [r["queries"] for r in runs]
    return {
        "committed": committed,
        "no_control": no_control,
        "orders": orders,
        "other_secrets": secrets_,
        "verdicts": sorted({r["verdict"] for r in [*runs, no_control]}),
        "queries_mean": statistics.fmean(queries),
        "queries_max": max(queries),
        "images_sent_max": max(r["images_sent"] for r in runs),
        "fixed_budget": whole_budget(model, key),
        "watermark_accuracy": accuracy(model, key.images, key.labels),
    }


def innocents(manifest: dict[str, Any], scheme: str) -> dict[str, str]:
    """{model: group} of every model innocent of ``scheme``'s owner key."""
    found = {name: "clean" for name in manifest["null"]}
    for s, row in manifest["schemes"].items():
        found.update({o["model"]: "other owner" for o in row["others"]})
        found[row["paper"]["model"]] = "paper setting"
        if s != scheme:
            found[row["owner"]["model"]] = "owner, other scheme"
    return found


def false_claims(cache: Cache, manifest: dict[str, Any], scheme: str) -> dict[str, Any]:
    row = manifest["schemes"][scheme]
    key = cache.key(row["owner"]["key"])
    rows = []
    for name, group in innocents(manifest, scheme).items():
        model = cache.model(name)
        sequential = over_http(model, "suspect", key)
        fixed = whole_budget(model, key)
        rows.append(
            {
                "model": name,
                "group": group,
                "verdict": sequential["verdict"],
                "queries": sequential["queries"],
                "stop_reason": sequential["stop_reason"],
                "fixed_matches": fixed["matches"],
                "fixed_queries": fixed["queries"],
                "fixed_p_value": fixed["p_value"],
            }
        )
    owner = cache.model(row["owner"]["model"])
    reverse = [
        {"key": other["key"], **over_http(owner, "owner", cache.key(other["key"]))}
        for other in row["others"]
    ]
    closest = min(rows, key=lambda r: r["fixed_p_value"])
    groups: dict[str, int] = {}
    for r in rows:
        groups[r["group"]] = groups.get(r["group"], 0) + 1
    return {
        "models": len(rows),
        "groups": groups,
        "verdicts": {v: sum(r["verdict"] == v for r in rows) for v in {r["verdict"] for r in rows}},
        "false_claims": sum(r["verdict"] == "owned" for r in rows),
        "queries_mean": statistics.fmean(r["queries"] for r in rows),
        "queries_max": max(r["queries"] for r in rows),
        "closest": closest,
        "rows": rows,
        "other_keys_on_owner": reverse,
        "other_keys_false_claims": sum(r["verdict"] == "owned" for r in reverse),
    }


def before(cache: Cache, row: dict[str, Any]) -> dict[str, Any]:
    """The paper's public setting: its own key, and a second party's key, on its model."""
    model = cache.model(row["paper"]["model"])
    key, rival = cache.key(row["paper"]["key"]), cache.key(row["paper_rival"]["key"])
    return {
        "setting": row["paper_setting"],
        "p0": key.p0,
        "kept": len(key),
        "own_key": over_http(model, "paper", key),
        "rival": {
            "p0": rival.p0,
            "kept": len(rival),
            "with_decoys": over_http(model, "paper", rival),
            "no_decoys": over_http(model, "paper", rival, decoy_ratio=0.0),
            "watermark_accuracy": accuracy(model, rival.images, rival.labels),
        },
    }


def simulate(p0: float, budget: int, args: argparse.Namespace) -> dict[str, Any]:
    """Null verifications with i.i.d. Bernoulli(p0) matches, looking after every key query.

    The verifier looks after each request (up to 8 key queries with decoys), so it looks at
    most this often: the simulated rate bounds the real rule's from above.
    """
    test = BinomialTest(p0=p0, alpha=args.sim_alpha, max_queries=budget)
    critical = torch.tensor(
        [min_matches_for(n, p0, test.level) or n + 1 for n in range(1, budget + 1)]
    )
    generator = torch.Generator().manual_seed(0)
    claims = 0
    for start in range(0, args.null_runs, 50_000):
        size = min(50_000, args.null_runs - start)
        counts = (torch.rand((size, budget), generator=generator) < p0).cumsum(dim=1)
        claims += int((counts >= critical).any(dim=1).sum())
    return {
        "p0": p0,
        "budget": budget,
        "alpha": args.sim_alpha,
        "runs": args.null_runs,
        "false_claims": claims,
        "rate": claims / args.null_runs,
        "exact_rate": false_claim_probability(test),
    }


def attacked(
    model: Classifier, key: KeySet, data: DataSplits, args: argparse.Namespace
) -> dict[str, Any]:
    first, second = data.test.halves()
    pruned = MagnitudePruning(rate=0.5)(model)
    tuned = FineTuning(epochs=args.finetune_epochs, seed=0, progress=False)(
        model, AttackData(train=first, test=second)
    ).cpu()
    assert isinstance(pruned, Classifier) and isinstance(tuned, Classifier)
    out = {}
    for name, attacked_model, test in (
        ("pruned50", pruned, data.test),
        ("finetuned", tuned, second),
    ):
        result = over_http(attacked_model, name, key)
        out[name] = {
            **result,
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
        for batch in (1, VerifyConfig().request_size, 32):
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


def _v(r: dict[str, Any]) -> str:
    """Verdict, key queries / images sent, requests of one run."""
    return f"{r['verdict']}, {r['queries']} / {r['images_sent']} in {r['requests']} req."


def markdown(record: dict[str, Any]) -> str:
    res = record["results"]
    cfg = res["models"]["config"]
    schemes = list(res["schemes"])
    plan = res["schemes"][schemes[0]]["queries_needed"]["committed"]
    lines = [
        "# Remote ownership verification on full MNIST (ours vs. the anchors)",
        "",
        f"- command: `{record['command']}`",
        f"- machine: {record['machine']}, {record['cpu_threads']} torch threads; models "
        f"trained and served on the CPU; torch {record['torch_version']}",
        f"- date: {record['written']}; total {record['total_seconds']:.0f} s",
        f"- models (verify_models.py, layout {res['models']['layout']}): {cfg}; training "
        f"{res['models']['training']}",
        f"- test: exact binomial, alpha {plan['alpha']:g} and budget {plan['budget']} key "
        "queries from the key's plan, a look after each request, each look at alpha/budget "
        "(Bonferroni); 16 images per request, at least one decoy (the key's control group) per "
        "key query; query order and decoy places fixed by the key's commitment; p0 per key = "
        "the largest per-reference leave-one-out Clopper-Pearson bound (99.9%) on clean "
        "references (zhang_mnist and lenet5) and models carrying other secret keys of the "
        "scheme",
        "- keys: secret multi-class keys (every digit c -> a secret label pi(c), trigger "
        "secrets drawn from the key), embedded at key ratio "
        f"{res['models']['key_ratio']['secret']}; given seeds, so the cache is reproducible",
        "",
        "## 1. Key queries to reach alpha against the watermarked model (HTTP)",
        "",
        "| scheme | p0 (calibrated) | key samples kept | the owner's key: verdict, key "
        "queries / images sent | without decoys | over keys and commitments: key queries "
        f"mean / max (anchors {ANCHOR_QUERIES}) | images sent, max | verdicts | whole budget "
        "(one look, in-process): matches, p-value |",
        "| --- | ---: | ---: | --- | --- | ---: | ---: | --- | --- |",
    ]
    for scheme in schemes:
        s = res["schemes"][scheme]
        q = s["queries_needed"]
        fixed = q["fixed_budget"]
        lines.append(
            f"| {scheme} | {s['p0']:.4f} | {s['kept']} | {_v(q['committed'])} | "
            f"{_v(q['no_control'])} | {q['queries_mean']:.1f} / {q['queries_max']} | "
            f"{q['images_sent_max']} | {', '.join(q['verdicts'])} | "
            f"{fixed['matches']}/{fixed['queries']}, {fixed['p_value']:.1e} |"
        )
    n_orders = record["config"]["orders"]
    n_others = len(res["schemes"][schemes[0]]["queries_needed"]["other_secrets"])
    lines += [
        "",
        f"Over keys and commitments: the owner's key, {n_orders} copies of it with a fresh "
        "salt (another commitment: another fixed order and other decoy places, same samples "
        f"and model) and {n_others} other owners' secret keys, each on the model embedding it.",
        "",
        "## 2. False claims against innocent models (HTTP, sequential rule)",
        "",
        "| key | innocent models (by group) | false claims | verdicts | key queries to the "
        "verdict: mean / max | closest innocent over the whole budget: model, matches, "
        "p-value | the owner's model, same budget: p-value | other owners' keys on the "
        "owner's model: false claims |",
        "| --- | --- | ---: | --- | ---: | --- | ---: | ---: |",
    ]
    for scheme in schemes:
        f = res["schemes"][scheme]["false_claims"]
        c = f["closest"]
        owner_p = res["schemes"][scheme]["queries_needed"]["fixed_budget"]["p_value"]
        groups = ", ".join(f"{n} {g}" for g, n in sorted(f["groups"].items()))
        verdicts = ", ".join(f"{n} {v}" for v, n in sorted(f["verdicts"].items()))
        lines.append(
            f"| {scheme} | {f['models']} ({groups}) | {f['false_claims']} | {verdicts} | "
            f"{f['queries_mean']:.1f} / {f['queries_max']} | {c['model']}, "
            f"{c['fixed_matches']}/{c['fixed_queries']}, {c['fixed_p_value']:.2e} | "
            f"{owner_p:.1e} | {f['other_keys_false_claims']}/{len(f['other_keys_on_owner'])} |"
        )
    lines += [
        "",
        f"Innocent models: {cfg['null_models']} clean models (zhang_mnist and lenet5, seeds "
        "disjoint from the references'), the models watermarked by other owners with their "
        "own secret keys (every scheme), the owner's models for the other schemes, and the "
        "models watermarked with the paper's public setting. The calibration references are "
        "not innocents here: the key was screened on them.",
        "",
        "## 3. Before issue 7: the paper's public setting",
        "",
        "| scheme | setting | p0 | its own key on its model | a second party's key with the "
        "same setting, on that model: with decoys | without decoys | its watermark accuracy |",
        "| --- | --- | ---: | --- | --- | --- | ---: |",
    ]

    def claimed(run: Callable[[dict[str, Any]], dict[str, Any]]) -> int:
        return sum(run(res["schemes"][s]["before"])["verdict"] == "owned" for s in schemes)

    for scheme in schemes:
        b = res["schemes"][scheme]["before"]
        setting = ", ".join(f"{k}={v}" for k, v in b["setting"].items())
        lines.append(
            f"| {scheme} | {setting} | {b['p0']:.4f} | {_v(b['own_key'])} | "
            f"{_v(b['rival']['with_decoys'])} | {_v(b['rival']['no_decoys'])} | "
            f"{100 * b['rival']['watermark_accuracy']:.0f}% |"
        )
    lines += [
        "",
        f"A second party's key with the public setting was \"owned\" on the first party's "
        f"model for {claimed(lambda b: b['rival']['with_decoys'])} of {len(schemes)} schemes "
        f"with decoys ({claimed(lambda b: b['rival']['no_decoys'])} without): a model that "
        'learnt the public rule (e.g. "TEST on a 1 means 0") answers every key of that '
        "family. Decoys (plain images of the source class) only catch a model that gives the "
        "key label whatever it is shown; secret keys are what separates owners (section 2).",
        "",
        "## 4. The sequential rule's false-claim rate (simulated null runs)",
        "",
        "| p0 | budget | alpha | runs | false claims | simulated rate | exact rate | <= alpha |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for sim in res["simulation"]:
        lines.append(
            f"| {sim['p0']:.4f} | {sim['budget']} | {sim['alpha']:g} | {sim['runs']} | "
            f"{sim['false_claims']} | {sim['rate']:.2e} | {sim['exact_rate']:.2e} | "
            f"{'yes' if sim['rate'] <= sim['alpha'] else 'NO'} |"
        )
    lines += [
        "",
        "Simulated with a look after every key query; the verifier looks only after each "
        "request, so its rate is at most this.",
        "",
        "## 5. After seed 001's attacks (HTTP)",
        "",
        "| scheme | attack | test acc. | watermark acc. | verdict | key queries / images "
        "sent | adjusted p |",
        "| --- | --- | ---: | ---: | --- | ---: | ---: |",
    ]
    for scheme in schemes:
        for name, a in res["schemes"][scheme]["attacks"].items():
            lines.append(
                f"| {scheme} | {name} | {100 * a['test_accuracy']:.2f}% | "
                f"{100 * a['watermark_accuracy']:.0f}% | {a['verdict']} | {a['queries']} / "
                f"{a['images_sent']} | {a['adjusted_p_value']:.1e} |"
            )
    lines += [
        "",
        "## 6. Images per second: HTTP vs. in-process (same images, same run)",
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


def load_manifest(models: Path) -> dict[str, Any]:
    path = models / "models.json"
    if not path.is_file():
        sys.exit(f"{path} not found: run benchmarks/verify_models.py --out {models} first")
    manifest: dict[str, Any] = json.loads(path.read_text())
    if manifest.get("layout") != LAYOUT or "schemes" not in manifest:
        sys.exit(
            f"{models} was made by the pre-issue-7 verify_models.py (version-1 keys, which "
            f"ownmark refuses) or is incomplete: run benchmarks/verify_models.py --out "
            f".bench-data/verify2 and pass --models .bench-data/verify2"
        )
    return manifest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-path", required=True, help="folder with the MNIST IDX files")
    parser.add_argument("--models", default=".bench-data/verify2", help="verify_models.py output")
    parser.add_argument("--schemes", nargs="+", choices=SCHEMES, default=list(SCHEMES))
    parser.add_argument(
        "--orders", type=int, default=10, help="re-salted commitments of the owner's key"
    )
    parser.add_argument("--null-runs", type=int, default=200_000)
    parser.add_argument("--sim-alpha", type=float, default=1e-3)
    parser.add_argument("--finetune-epochs", type=int, default=5)
    parser.add_argument("--qps-images", type=int, default=1024)
    parser.add_argument(
        "--test-subset", type=int, default=0, help="attack on the first N test images (smoke)"
    )
    parser.add_argument("--out-dir", default="benchmarks/results")
    args = parser.parse_args()
    start = time.perf_counter()
    models = Path(args.models)
    manifest = load_manifest(models)
    cache = Cache(models)
    data = load_dataset("mnist", args.data_path)
    if args.test_subset:
        test = data.test.subset(torch.arange(args.test_subset), f"mnist/test[:{args.test_subset}]")
        data = DataSplits(train=data.train, test=test)
    schemes = [s for s in args.schemes if s in manifest["schemes"]]
    if not schemes:
        sys.exit(f"{models} holds none of the schemes {args.schemes}")
    results: dict[str, Any] = {"models": manifest, "schemes": {}}
    for scheme in schemes:
        plan = manifest["schemes"][scheme]
        key = cache.key(plan["owner"]["key"])
        owner = cache.model(plan["owner"]["model"])
        row: dict[str, Any] = {"p0": key.p0, "kept": len(key)}
        row["queries_needed"] = queries_needed(cache, plan, args)
        row["false_claims"] = false_claims(cache, manifest, scheme)
        row["before"] = before(cache, plan)
        row["attacks"] = attacked(owner, key, data, args)
        results["schemes"][scheme] = row
        q, f, b = row["queries_needed"], row["false_claims"], row["before"]
        print(
            f"{scheme}: owner {_v(q['committed'])}; over keys/commitments "
            f"{q['queries_mean']:.1f}/{q['queries_max']}; false claims "
            f"{f['false_claims']}/{f['models']} (other keys on owner "
            f"{f['other_keys_false_claims']}/{len(f['other_keys_on_owner'])}); before: rival "
            f"{b['rival']['with_decoys']['verdict']}; attacks "
            f"{ {k: (v['verdict'], v['queries']) for k, v in row['attacks'].items()} }",
            file=sys.stderr,
            flush=True,
        )
    plans = sorted(
        {
            (
                results["schemes"][s]["p0"],
                results["schemes"][s]["queries_needed"]["committed"]["budget"],
            )
            for s in schemes
        }
    )
    results["simulation"] = [simulate(p0, budget, args) for p0, budget in plans]
    plan = manifest["schemes"][schemes[0]]
    results["throughput"] = throughput(
        cache.model(plan["owner"]["model"]), cache.key(plan["owner"]["key"]), args
    )
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
