"""Reproduce docs/prunenet.md: PruneNet vs FASP, magnitude, random and SliceGPT at equal removed parameters.

For each real model and each target fraction of parameters removed, every method is
run through ``target_params`` (exact count), saved, and evaluated with the CLI
(`slimformer eval`: perplexity on held-out text plus zero-shot PIQA and ARC-Easy from
the local task files, ``--limit``); the JSON files are rendered by `slimformer report`
into docs/prunenet/ (table + perplexity plot). Policy reuse: one policy trained at
sparsity 0.3 prunes at 0.2 and 0.4 with no training; times are reported.

    python benchmarks/prunenet.py [--threads 1] [--targets 0.1 0.2] [--limit 100]

With ``--variants`` it instead compares PruneNet's training variants (library vs the
official code's, ``variant="reference"``) at equal seeds and episode budgets, perplexity
only, and writes docs/prunenet/variants.json (the "Reference variant" table of docs/prunenet.md):

    python benchmarks/prunenet.py --models stories260k --targets 0.2 0.3 --seeds 0 1 2 \
        --variants library reference library-official reference-official random-mlp
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable

import torch

import slimformer as sf
from slimformer.cli import main as cli

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SHARED", REPO.parent / "shared"))
OUT = REPO / "docs" / "prunenet"

METHODS: dict[str, Callable[[float], Any]] = {
    "prunenet": lambda f: sf.PruneNetConfig(target_params=f),
    "fasp-mlp": lambda f: sf.FASPConfig(target_params=f, attention="none"),
    "fasp": lambda f: sf.FASPConfig(target_params=f),
    "magnitude-mlp": lambda f: sf.MagnitudeConfig(target_params=f, attention="none"),
    "random-mlp": lambda f: sf.RandomConfig(target_params=f, attention="none"),
    "slicegpt": lambda f: sf.SliceGPTConfig(target_params=f),
}

SETUPS: dict[str, dict[str, Any]] = {
    "stories260k": {"calib": ("tinystories/tinystories_train_prefix.txt", 128, 256, 42),
                    "ppl": ("tinystories/tinystories_valid_prefix.txt", 512)},
    "opt-fixture": {"calib": ("wikitext2/wiki.valid.raw", 64, 256, 0), "ppl": ("wikitext2/wiki.test.raw", 256)},
}


#: settings compared by ``--variants`` (same ``prune_seed`` for all): the library's defaults
#: (60 episodes, lr 1e-2) and the official code's (20 episodes, lr 1e-3), each with both
#: training variants; random MLP channels (same seeds) as the floor
VARIANTS: dict[str, Callable[[float, int], Any]] = {
    "library": lambda f, s: sf.PruneNetConfig(target_params=f, prune_seed=s),
    "reference": lambda f, s: sf.PruneNetConfig(target_params=f, prune_seed=s, variant="reference"),
    "library-official": lambda f, s: sf.PruneNetConfig(target_params=f, prune_seed=s, episodes=20, lr=1e-3),
    "reference-official": lambda f, s: sf.PruneNetConfig(target_params=f, prune_seed=s, episodes=20, lr=1e-3,
                                                         variant="reference"),
    "random-mlp": lambda f, s: sf.RandomConfig(target_params=f, prune_seed=s, attention="none"),
}


def evaluate(model_dir: str, setup: dict[str, Any], limit: int, out: Path) -> None:
    text, seqlen = setup["ppl"]
    args = ["eval", model_dir, "--ppl", str(SHARED / "data" / text), "--seqlen", str(seqlen), "--max-tokens", "100000",
            "--batch-size", "16", "--tasks", "piqa,arc_easy", "--tasks-data", str(SHARED / "data"),
            "--limit", str(limit), "--json", str(out), "--no-progress"]
    assert cli(args) == 0, args


def run_model(name: str, targets: list[float], limit: int, work: Path, data: Path) -> dict[str, Any]:
    setup = SETUPS[name]
    path = SHARED / "models" / name
    evaluate(str(path), setup, limit, data / f"{name}-dense.json")
    times: dict[str, Any] = {}
    for target in targets:
        for method, make in METHODS.items():
            model, tok = sf.load_model(str(path), dtype="float32")
            calib = None
            if sf.methods.get_method(make(target).method).accepts_calibration:
                text, n, seqlen, seed = setup["calib"]
                calib = sf.data.load(str(SHARED / "data" / text), tok, samples=n, seqlen=seqlen, seed=seed)
            t0 = time.perf_counter()
            result = sf.compress(model, make(target), calib, progress=False, tokenizer=tok)
            times[f"{method}@{target}"] = round(time.perf_counter() - t0, 2)
            out = work / f"{name}-{method}-{target}"
            result.save(out, overwrite=True)
            shutil.copy(out / "slimformer_report.json", data / f"{name}-{method}-{target}.compress.json")
            evaluate(str(out), setup, limit, data / f"{name}-{method}-{target}.json")
            print(name, method, target, result.report["removed_fraction"], flush=True)
    return times


def reuse(name: str, work: Path) -> dict[str, Any]:
    """Train once at sparsity 0.3, prune at 0.2 and 0.4 with the saved policy (no training, no data)."""
    path = str(SHARED / "models" / name)
    model, _ = sf.load_model(path, dtype="float32")
    t0 = time.perf_counter()
    res = sf.compress(model, sf.PruneNetConfig(sparsity=0.3), progress=False)
    train_s = time.perf_counter() - t0
    out = Path(res.save(work / f"{name}-prunenet-train30", overwrite=True))
    row: dict[str, Any] = {"train_at_0.3_seconds": round(train_s, 2),
                           "policy_training_seconds": res.report["policy"]["seconds"]}
    for sp in (0.2, 0.4):
        model, _ = sf.load_model(path, dtype="float32")
        t0 = time.perf_counter()
        sf.compress(model, sf.PruneNetConfig(sparsity=sp, policy=str(out / "policy.safetensors")), progress=False)
        row[f"reuse_at_{sp}_seconds"] = round(time.perf_counter() - t0, 3)
    return row


def spectral_ks(dense: torch.nn.Module, pruned: torch.nn.Module) -> float:
    """Mean over layers of ``KS(sigma(W1), sigma(W1 pruned))`` (what PruneNet's reward measures)."""
    from slimformer.arch import get_adapter
    from slimformer.methods.prunenet import ks_distance
    from slimformer.methods.prunenet.apply import first_ffn_matrix

    ad = get_adapter(dense)
    pairs = zip(ad.get_layers(dense), ad.get_layers(pruned))
    ks = [ks_distance(torch.linalg.svdvals(first_ffn_matrix(a, ad)), torch.linalg.svdvals(first_ffn_matrix(b, ad)))
          for a, b in pairs]
    return sum(ks) / len(ks)


def variant_run(name: str, variant: str, target: float, seed: int, ids: torch.Tensor, seqlen: int) -> dict[str, Any]:
    """Compress with one ``--variants`` setting and seed; perplexity on the held-out tokens ``ids: [N]``."""
    from slimformer.eval import perplexity

    path = str(SHARED / "models" / name)
    model, tok = sf.load_model(path, dtype="float32")
    t0 = time.perf_counter()
    result = sf.compress(model, VARIANTS[variant](target, seed), progress=False)
    seconds = time.perf_counter() - t0
    dense, _ = sf.load_model(path, dtype="float32")
    ppl = perplexity(model, tok, ids, seqlen=seqlen, batch_size=16, progress=False).ppl
    row: dict[str, Any] = {"model": name, "variant": variant, "target": target, "seed": seed, "ppl": round(ppl, 4),
                           "achieved": round(result.report["target_params"]["achieved"], 6),
                           "compress_seconds": round(seconds, 2), "mean_ks": round(spectral_ks(dense, model), 4)}
    policy = result.report.get("policy")
    if policy:
        rewards = policy["rewards"]
        row.update(first_reward=rewards[0], last_reward=rewards[-1], best_episode=policy.get("best_episode"))
    return row


def compare_variants(models: list[str], targets: list[float], variants: list[str], seeds: list[int],
                     max_tokens: int) -> dict[str, Any]:
    """Every (model, target, variant, seed): perplexity, achieved fraction, spectral KS. Summary: mean/min/max ppl."""
    runs = []
    for name in models:
        text, seqlen = SETUPS[name]["ppl"]
        _, tok = sf.load_model(str(SHARED / "models" / name), dtype="float32")
        ids = sf.data.tokenize_text((SHARED / "data" / text).read_text(), tok)[:max_tokens]
        for target in targets:
            for variant in variants:
                for seed in seeds:
                    runs.append(variant_run(name, variant, target, seed, ids, seqlen))
                    print(json.dumps(runs[-1]), flush=True)
    summary: dict[str, Any] = {}
    for r in runs:
        summary.setdefault(r["model"], {}).setdefault(str(r["target"]), {}).setdefault(r["variant"], []).append(r)
    for per_target in summary.values():
        for per_variant in per_target.values():
            for variant, rows in per_variant.items():
                ppls = [r["ppl"] for r in rows]
                per_variant[variant] = {"ppl_mean": round(sum(ppls) / len(ppls), 3), "ppl_min": min(ppls),
                                        "ppl_max": max(ppls),
                                        "mean_ks": round(sum(r["mean_ks"] for r in rows) / len(rows), 4)}
    return {"runs": runs, "summary": summary}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=list(SETUPS), choices=list(SETUPS))
    p.add_argument("--targets", nargs="+", type=float, default=[0.1, 0.2])
    p.add_argument("--limit", type=int, default=100)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--work", default="/tmp/sf-prunenet")
    p.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=None,
                   help="compare these PruneNet settings instead (writes docs/prunenet/variants.json)")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="prune_seed values (with --variants)")
    p.add_argument("--max-tokens", type=int, default=100000, help="perplexity tokens (with --variants)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.variants:
        t0 = time.perf_counter()
        res = compare_variants(args.models, args.targets, args.variants, args.seeds, args.max_tokens)
        res = {"settings": vars(args), "seconds": round(time.perf_counter() - t0, 1), **res}
        OUT.mkdir(parents=True, exist_ok=True)
        (OUT / "variants.json").write_text(json.dumps(res, indent=2) + "\n")
        print(json.dumps(res["summary"], indent=2))
        return
    work, data = Path(args.work), OUT / "data"
    work.mkdir(parents=True, exist_ok=True)
    data.mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {"settings": vars(args), "compress_seconds": {}, "reuse": {}}
    for name in args.models:
        summary["compress_seconds"][name] = run_model(name, args.targets, args.limit, work, data)
        summary["reuse"][name] = reuse(name, work)
    (OUT / "timings.json").write_text(json.dumps(summary, indent=2) + "\n")
    evals = sorted(str(f) for f in data.glob("*.json") if not f.name.endswith(".compress.json"))
    assert cli(["report", *evals, "--out", str(OUT)]) == 0  # compression seconds: timings.json
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
