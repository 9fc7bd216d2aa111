"""Reproduce docs/prunenet.md: PruneNet vs FASP, magnitude, random and SliceGPT at equal removed parameters.

For each real model and each target fraction of parameters removed, every method is
run through ``target_params`` (exact count), saved, and evaluated with the CLI
(`slimformer eval`: perplexity on held-out text plus zero-shot PIQA and ARC-Easy from
the local task files, ``--limit``); the JSON files are rendered by `slimformer report`
into docs/prunenet/ (table + perplexity plot). Policy reuse: one policy trained at
sparsity 0.3 prunes at 0.2 and 0.4 with no training; times are reported.

    python benchmarks/prunenet.py [--threads 1] [--targets 0.1 0.2] [--limit 100]
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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=list(SETUPS), choices=list(SETUPS))
    p.add_argument("--targets", nargs="+", type=float, default=[0.1, 0.2])
    p.add_argument("--limit", type=int, default=100)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--work", default="/tmp/sf-prunenet")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
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
