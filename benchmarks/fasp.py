"""Reproduce docs/fasp.md: FASP vs. the structured baselines vs. SliceGPT at equal removed parameters.

Every method gets the same budget through ``target_params`` (exact parameter count,
bisection); perplexity on held-out text; compression seconds from the report.

    python benchmarks/fasp.py [--threads 1] [--fractions 0.2 0.3]   # writes docs/fasp.json, docs/fasp.png
    python benchmarks/fasp.py --render                              # Markdown tables for docs/fasp.md
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any, Callable

import torch

import slimformer as sf
from slimformer.eval import perplexity

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SHARED", REPO.parent / "shared"))

METHODS: dict[str, Callable[[float], Any]] = {
    "fasp": lambda f: sf.FASPConfig(target_params=f),
    "fasp (heads)": lambda f: sf.FASPConfig(target_params=f, attention="heads"),
    "fasp (MLP only)": lambda f: sf.FASPConfig(target_params=f, attention="none"),
    "fasp (fp32 Gram)": lambda f: sf.FASPConfig(target_params=f, gram_dtype="float32"),
    "wanda-sp": lambda f: sf.WandaSPConfig(target_params=f),
    "magnitude": lambda f: sf.MagnitudeConfig(target_params=f),
    "random": lambda f: sf.RandomConfig(target_params=f),
    "magnitude + restore": lambda f: sf.MagnitudeConfig(target_params=f, restore=True),
    "random + restore": lambda f: sf.RandomConfig(target_params=f, restore=True),
    "slicegpt": lambda f: sf.SliceGPTConfig(target_params=f),
}

SETUPS = {
    "stories260k": {
        "calib": "data/tinystories/tinystories_train_prefix.txt", "samples": 128, "seqlen": 256, "seed": 42,
        "eval": "data/tinystories/tinystories_valid_prefix.txt", "eval_seqlen": 512, "eval_tokens": 100_000,
    },
    "opt-fixture": {
        "calib": "data/wikitext2/wiki.valid.raw", "samples": 64, "seqlen": 256, "seed": 0,
        "eval": "data/wikitext2/wiki.test.raw", "eval_seqlen": 256, "eval_tokens": 40_000,
    },
}


def run_model(name: str, fractions: list[float], table: dict[str, Callable[[float], Any]] | None = None,
              extra: Callable[[str, dict[str, Any]], dict[str, Any]] | None = None) -> dict[str, Any]:
    """Dense perplexity, then every method of ``table`` (default: this script's METHODS) at every fraction.

    ``extra(method, report)`` adds method-specific fields to a row. A method that cannot reach a
    budget (ValueError) gets a row with ``"error"``. Shared with benchmarks/disp.py.
    """
    table = METHODS if table is None else table
    s = SETUPS[name]
    model_dir = SHARED / "models" / name
    dense, tok = sf.load_model(model_dir, dtype="float32")
    calib = sf.data.load(str(SHARED / s["calib"]), tok, samples=s["samples"], seqlen=s["seqlen"], seed=s["seed"])
    ids = sf.data.tokenize_text(sf.data.load_text(str(SHARED / s["eval"])).text, tok)[: s["eval_tokens"]]

    def ppl(m: torch.nn.Module) -> tuple[float, int]:
        r = perplexity(m, tok, ids, seqlen=s["eval_seqlen"], batch_size=16, progress=False)
        return r.ppl, r.tokens

    d, tokens = ppl(dense)
    out: dict[str, Any] = {"setup": s, "dense_ppl": d, "tokens": tokens, "params": sf.count_params(dense), "rows": []}
    print(f"{name}: dense ppl {d:.3f} on {tokens:,} tokens", flush=True)
    for f in fractions:
        for method, make in table.items():
            model, _ = sf.load_model(model_dir, dtype="float32")
            t0 = time.perf_counter()
            try:
                r = sf.compress(model, make(f), calib, progress=False)
            except ValueError as exc:  # e.g. a budget a method cannot reach
                out["rows"].append({"target": f, "method": method, "error": str(exc).splitlines()[0]})
                print(name, method, f, "error:", exc, flush=True)
                continue
            seconds = time.perf_counter() - t0
            p, _ = ppl(model)
            row = {"target": f, "method": method, "removed": r.report["removed_fraction"], "ppl": p,
                   "seconds": seconds, "params_after": r.report["params_after"]}
            if extra is not None:
                row.update(extra(method, r.report))
            out["rows"].append(row)
            print(name, json.dumps({k: v for k, v in row.items() if k != "kept_widths"}), flush=True)
    return out


TIMING_METHODS = ("fasp", "fasp (fp32 Gram)", "slicegpt", "wanda-sp", "magnitude")


def timing_llama(threads: int, methods: tuple[str, ...] = TIMING_METHODS) -> dict[str, float]:
    """Wall time on a random Llama (d 1024, 8 layers, MLP 2816, 16 heads), 32 x 512 calibration tokens."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(hidden_size=1024, intermediate_size=2816, num_hidden_layers=8, num_attention_heads=16,
                      num_key_value_heads=16, vocab_size=32000, max_position_embeddings=2048)
    calib = torch.randint(0, 32000, (32, 512), generator=torch.Generator().manual_seed(0))
    res = {}
    for method in methods:
        make = METHODS[method]
        torch.manual_seed(0)
        model = LlamaForCausalLM(cfg).eval()
        t0 = time.perf_counter()
        sf.compress(model, make(0.2), calib, batch_size=8, progress=False)
        res[method] = time.perf_counter() - t0
        print(f"llama-1024x8 {method}: {res[method]:.1f}s", flush=True)
    return res


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(6 * len(results), 4.2))
    for ax, (name, res) in zip(axes, results.items()):
        for method in METHODS:
            rows = [r for r in res["rows"] if r["method"] == method]
            ax.plot([100 * r["removed"] for r in rows], [r["ppl"] for r in rows], marker="o", label=method)
        ax.axhline(res["dense_ppl"], color="k", ls="--", lw=0.8, label="dense")
        ax.set_yscale("log")
        ax.set_xlabel("parameters removed (%)")
        ax.set_ylabel("perplexity (log)")
        ax.set_title(name)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def ppl_table(name: str, res: dict[str, Any]) -> list[str]:
    """Markdown lines of one model: setup sentence + perplexity/removed/seconds per method and fraction
    (rows with an ``"error"`` show it as such). Shared with benchmarks/disp.py."""
    s = res["setup"]
    lines = [f"### {name}", "",
             f"Dense perplexity **{res['dense_ppl']:.3f}** on {res['tokens']:,} tokens "
             f"({s['eval']}, windows of {s['eval_seqlen']}); {res['params']:,} parameters; calibration "
             f"{s['samples']} x {s['seqlen']} tokens of {s['calib']} (seed {s['seed']}).", ""]
    fractions = sorted({r["target"] for r in res["rows"]})
    head = "| method | " + " | ".join(f"ppl @ {100 * f:.0f}% (removed) | seconds" for f in fractions) + " |"
    lines += [head, "|---|" + "---|---|" * len(fractions)]
    for method in dict.fromkeys(r["method"] for r in res["rows"]):
        cells = []
        for f in fractions:
            r = next(r for r in res["rows"] if r["method"] == method and r["target"] == f)
            cells.append("error | -" if "error" in r else f"{r['ppl']:.2f} ({100 * r['removed']:.1f}%) | {r['seconds']:.1f}")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return lines


def tables(data: dict[str, Any]) -> str:
    """Markdown tables (one per model) from the JSON this script writes."""
    lines = []
    for name, res in data["models"].items():
        lines += ppl_table(name, res)
        lines.append("")
    if data.get("timing"):
        lines += ["### Compression time, random Llama (d 1024, 8 layers, MLP 2816), 32 x 512 tokens, 20% removed", "",
                  "| method | seconds |", "|---|---|"]
        lines += [f"| {m} | {t:.1f} |" for m, t in data["timing"].items()]
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--fractions", type=float, nargs="+", default=[0.2, 0.3])
    p.add_argument("--json", default=str(REPO / "docs" / "fasp.json"))
    p.add_argument("--no-timing", action="store_true", help="skip the 1024-wide Llama timing run")
    p.add_argument("--render", action="store_true", help="only print the Markdown tables of an existing --json")
    p.add_argument("--only-timing", nargs="*", default=None, metavar="METHOD",
                   help="only the Llama timing of these methods (default: all), merged into an existing --json")
    args = p.parse_args()
    if args.only_timing is not None:
        torch.set_num_threads(args.threads)
        data = json.loads(Path(args.json).read_text())
        data.setdefault("timing", {}).update(timing_llama(args.threads, tuple(args.only_timing) or TIMING_METHODS))
        Path(args.json).write_text(json.dumps(data, indent=2) + "\n")
        print(tables(data))
        return
    if args.render:
        print(tables(json.loads(Path(args.json).read_text())))
        return
    torch.set_num_threads(args.threads)
    results = {name: run_model(name, args.fractions) for name in SETUPS}
    timing = {} if args.no_timing else timing_llama(args.threads)
    Path(args.json).write_text(json.dumps({"threads": args.threads, "models": results, "timing": timing,
                                           "versions": sf.api.library_versions()}, indent=2) + "\n")
    plot(results, Path(args.json).with_suffix(".png"))
    print(tables(json.loads(Path(args.json).read_text())))
    print(f"wrote {args.json} and {Path(args.json).with_suffix('.png')}")


if __name__ == "__main__":
    main()
