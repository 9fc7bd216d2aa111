"""DOTResize vs SliceGPT at equal parameter count: docs/dotresize.md (+ docs/dotresize.png, docs/dotresize.json).

    python benchmarks/dotresize.py [--threads 1] [--targets 0.1 0.2] [--models stories260k opt-fixture] [--sweep] [--others]
    python benchmarks/dotresize.py --render docs/dotresize.json   # re-render Markdown + plot only

Both methods get the same residual widths (``target_params``: bisection on the exact
parameter count, shared planner), the same calibration windows and the same
evaluation text, so only the basis at each residual point differs (PCA vs the
orthonormal factor of the optimal-transport merge map). ``--others`` adds the
other registered methods whose config accepts ``target_params`` (e.g. FASP).

Settings:
* stories260k: calibration 128 x 256 tokens of the TinyStories train prefix (seed 42);
  perplexity on the first 61,440 tokens of the TinyStories valid prefix, seqlen 512.
* opt-fixture: calibration 64 x 256 tokens of WikiText-2 valid (seed 0); perplexity on
  the first 40,000 tokens of WikiText-2 test, seqlen 256.
``--sweep`` adds a settings sweep (entropic regularisation, marginal, targets; residual
and MLP) on stories260k at the first target.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from pathlib import Path
from typing import Any, Callable

import torch

import slimformer as sf
from slimformer.eval import perplexity
from slimformer.memory import peak_rss_mb, reset_peak_rss
from slimformer.methods import METHODS

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SHARED", REPO.parent / "shared"))


NOTES = {
    "stories260k": "calib 128x256 TinyStories train (seed 42); ppl first 61,440 tokens of the TinyStories "
                   "valid prefix, seqlen 512",
    "opt-fixture": "calib 64x256 WikiText-2 valid (seed 0); ppl first 40k tokens of WikiText-2 test, seqlen 256",
}


def _settings(name: str, tok: Any) -> tuple[Any, Callable[[Any], float], str]:
    if name == "stories260k":
        data = SHARED / "data" / "tinystories"
        calib = sf.data.load(str(data / "tinystories_train_prefix.txt"), tok, samples=128, seqlen=256, seed=42)
        text = sf.data.tokenize_text(sf.data.load_text(str(data / "tinystories_valid_prefix.txt")).text, tok)[:61_440]
        return calib, lambda m: perplexity(m, tok, text, seqlen=512, batch_size=16, progress=False).ppl, NOTES[name]
    if name == "opt-fixture":
        calib = sf.data.load(str(SHARED / "data/wikitext2/wiki.valid.raw"), tok, samples=64, seqlen=256, seed=0)
        test = sf.data.tokenize_text(sf.data.load_text(str(SHARED / "data/wikitext2/wiki.test.raw")).text, tok)[:40_000]
        return calib, lambda m: perplexity(m, tok, test, seqlen=256, batch_size=16, progress=False).ppl, NOTES[name]
    raise ValueError(f"unknown model {name}")


def _other_methods() -> dict[str, type]:
    """Registered methods besides these two whose config takes ``target_params``."""
    out = {}
    for name, spec in METHODS.items():
        fields = {f.name for f in dataclasses.fields(spec.config_cls)}
        if name not in ("slicegpt", "dotresize", "disp") and "target_params" in fields:  # disp trains
            out[name] = spec.config_cls
    return out


def _run(path: Path, config: Any, calib: Any, evaluate: Callable[[Any], float]) -> dict[str, Any]:
    model, _ = sf.load_model(path)
    reset_peak_rss()
    t0 = time.perf_counter()
    result = sf.compress(model, config, calib, progress=False)
    seconds = time.perf_counter() - t0
    peak = peak_rss_mb()
    ppl = evaluate(model)
    r = result.report
    return {
        "method": r["method"] + ("-mlp" if getattr(config, "where", "") == "mlp" else "")
        + (" (prune only)" if getattr(config, "prune_only", False) else ""),
        "config": r["config"], "target": getattr(config, "target_params", None),
        "removed": r["removed_fraction"], "params_after": r["params_after"], "ppl": ppl,
        "seconds": round(seconds, 2), "peak_rss_mb": round(peak, 1),
        "kept_energy_mean": (sum(r["kept_energy"].values()) / len(r["kept_energy"])) if r.get("kept_energy") else None,
        "widths": r.get("widths"),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--targets", type=float, nargs="+", default=[0.1, 0.2])
    ap.add_argument("--models", nargs="+", default=["stories260k", "opt-fixture"])
    ap.add_argument("--sweep", action="store_true")
    ap.add_argument("--others", action="store_true", help="also run other registered methods taking target_params")
    ap.add_argument("--out", default=str(REPO / "docs"))
    ap.add_argument("--render", metavar="JSON", help="only re-render the Markdown/plot from a saved dotresize.json")
    args = ap.parse_args()
    out = Path(args.out)
    if args.render:
        saved = json.loads(Path(args.render).read_text())
        _plot(saved["rows"], saved["dense"], out / "dotresize.png")
        md = _markdown(saved["rows"], saved["dense"], saved.get("notes") or NOTES, saved["sweep"],
                       saved.get("threads", args.threads))
        (out / "dotresize.md").write_text(md)
        return
    torch.set_num_threads(args.threads)
    rows: list[dict[str, Any]] = []
    dense: dict[str, float] = {}
    notes: dict[str, str] = {}
    sweep: list[dict[str, Any]] = []
    for name in args.models:
        path = SHARED / "models" / name
        model, tok = sf.load_model(path)
        calib, evaluate, notes[name] = _settings(name, tok)
        dense[name] = evaluate(model)
        print(f"{name}: dense ppl {dense[name]:.3f}", flush=True)
        for tp in args.targets:
            configs = [sf.SliceGPTConfig(target_params=tp), sf.DOTResizeConfig(target_params=tp),
                       sf.DOTResizeConfig(target_params=tp, prune_only=True),
                       sf.DOTResizeConfig(target_params=tp, where="mlp"),
                       sf.DOTResizeConfig(target_params=tp, where="mlp", prune_only=True)]
            if args.others:
                configs += [cls(target_params=tp) for cls in _other_methods().values()]
            for cfg in configs:
                try:
                    row = {"model": name, **_run(path, cfg, calib, evaluate)}
                except Exception as exc:  # another method's failure must not lose this run's numbers
                    print(f"  {type(cfg).__name__} target {tp} failed: {exc}", flush=True)
                    continue
                rows.append(row)
                print(f"  {row['method']:10s} target {tp}: removed {row['removed']:.4f} ppl {row['ppl']:.3f} "
                      f"({row['seconds']}s)", flush=True)
        if args.sweep and name == "stories260k":
            tp = args.targets[0]
            grid = [("residual", reg, "uniform", "norm") for reg in (0.0, 0.01, 0.05, 0.1, 1.0)]
            grid += [("residual", 0.1, "nearest", "norm"), ("residual", 0.1, "uniform", "spread")]
            grid += [("mlp", reg, "uniform", "norm") for reg in (0.0, 0.01, 0.1)]
            for where, reg, marginal, targets in grid:
                cfg = sf.DOTResizeConfig(target_params=tp, entropic_reg=reg, target_marginal=marginal,
                                         targets=targets, where=where)
                try:
                    row = _run(path, cfg, calib, evaluate)
                except ValueError as exc:  # e.g. a rank-deficient merge map
                    row = {"ppl": float("nan"), "error": str(exc)[:80]}
                sweep.append({"target": tp, "where": where, "reg": reg, "marginal": marginal, "targets": targets,
                              **row})
                print(f"  sweep {tp} {where} reg {reg} {marginal} {targets}: ppl {row['ppl']:.3f}", flush=True)
    (out / "dotresize.json").write_text(json.dumps({"dense": dense, "rows": rows, "sweep": sweep, "notes": notes,
                                                    "threads": args.threads}, indent=1))
    _plot(rows, dense, out / "dotresize.png")
    (out / "dotresize.md").write_text(_markdown(rows, dense, notes, sweep, args.threads))
    print(f"wrote {out / 'dotresize.md'}")


def _plot(rows: list[dict[str, Any]], dense: dict[str, float], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = sorted(dense)
    fig, axes = plt.subplots(1, len(models), figsize=(5 * len(models), 4), squeeze=False)
    for ax, name in zip(axes[0], models):
        for method in sorted({r["method"] for r in rows if r["model"] == name}):
            pts = sorted((r["removed"], r["ppl"]) for r in rows if r["model"] == name and r["method"] == method)
            ax.plot([100 * p[0] for p in pts], [p[1] for p in pts], marker="o", label=method)
        ax.axhline(dense[name], color="grey", ls="--", label="dense")
        ax.set_yscale("log")
        ax.set_xlabel("parameters removed (%)")
        ax.set_ylabel("perplexity")
        ax.set_title(name)
        ax.legend(fontsize=7, framealpha=0.6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _findings(rows: list[dict[str, Any]]) -> list[str]:
    """Comparative sentences computed from the measured rows (so a rerun keeps them true)."""
    out = []
    for name in sorted({r["model"] for r in rows}):
        for tp in sorted({r["target"] for r in rows if r["model"] == name}):
            sel = {r["method"]: r["ppl"] for r in rows if r["model"] == name and r["target"] == tp}
            best = min(sel, key=sel.get)
            parts = [f"**{name}, {100 * tp:.0f}% of parameters**: best {best} ({sel[best]:.2f})"]
            if "dotresize" in sel and "slicegpt" in sel:
                parts.append(f"DOTResize/SliceGPT perplexity ratio {sel['dotresize'] / sel['slicegpt']:.2f}")
            for merged, pruned, what in (("dotresize", "dotresize (prune only)", "residual neurons"),
                                         ("dotresize-mlp", "dotresize-mlp (prune only)", "MLP channels")):
                if merged in sel and pruned in sel:
                    r = sel[merged] / sel[pruned] - 1
                    parts.append(f"merging the {what} gives {100 * abs(r):.1f}% {'lower' if r < 0 else 'higher'} "
                                 f"perplexity than dropping the same ones")
            out.append("* " + "; ".join(parts) + ".")
    return out


def _markdown(rows, dense, notes, sweep, threads) -> str:
    lines = [
        "# DOTResize vs SliceGPT at equal parameter count",
        "",
        "Produced by `python benchmarks/dotresize.py --sweep --others` (here run as two processes, "
        "`--models stories260k` and `--models opt-fixture`, whose JSON files were concatenated and rendered "
        "with `--render docs/dotresize.json`) on this machine (CPU, "
        f"{threads} torch thread(s), fp32; other jobs were running, so seconds are indicative). Both methods "
        "use the same widths (`target_params`, exact count incl. shortcuts and the untied head), the same "
        "calibration windows and evaluation text; only the basis per residual point differs. DOTResize "
        "defaults: targets = largest activation norm, l2 cost, uniform marginals, entropic_reg 0.1 "
        "(0.01 for the MLP). "
        "`dotresize (prune only)` keeps the same target neurons and drops the others without merging "
        "(the width-pruning baseline DOTResize is an add-on to). `dotresize-mlp` merges the MLP "
        "intermediate channels instead (`where=\"mlp\"`, same kept counts as MLP-only structured pruning). "
        "`fasp`, `magnitude`, `wanda-sp`, `random` are the structured-pruning methods of this repository "
        "with their defaults (MLP channels + value channels per head). "
        "`peak RSS` is the process's peak resident memory during the compression (reset before each "
        "run with Linux `clear_refs`; it includes the Python/torch runtime, the loaded model and the "
        "calibration activations).",
        "",
    ]
    lines += ["## Findings (computed from the tables below)", "", *_findings(rows), "",
              "Why the residual variant trails SliceGPT: both keep a k-dimensional subspace of the same "
              "residual stream, and PCA's is by construction the one that keeps the most activation energy "
              "for that second moment (column `mean kept energy`), while DOTResize keeps the span of soft "
              "cluster-averaging vectors of neurons. The paper's v2 positions DOTResize as an add-on to "
              "pruning; the `prune only` rows (same target neurons, no merging) are that comparison. "
              "PruneNet (calibration-free API) is not in the table.", ""]
    for name in sorted(dense):
        lines += [f"## {name}", "", f"{notes.get(name, '')}. Dense perplexity **{dense[name]:.3f}**.", "",
                  "| method | target removed | removed | params after | perplexity | mean kept energy | seconds | peak RSS MB |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in rows:
            if r["model"] != name:
                continue
            ke = f"{r['kept_energy_mean']:.4f}" if r.get("kept_energy_mean") is not None else "-"
            lines.append(f"| {r['method']} | {r['target']} | {100 * r['removed']:.2f}% | {r['params_after']:,} | "
                         f"{r['ppl']:.3f} | {ke} | {r['seconds']} | {r['peak_rss_mb']} |")
        lines.append("")
    if sweep:
        lines += ["## DOTResize settings sweep (stories260k)", "",
                  "Perplexity per setting. The defaults (entropic_reg 0.1 residual / 0.01 MLP, uniform, norm) "
                  "were picked from this sweep, which uses the evaluation text: treat the best cells as "
                  "optimistic.", "",
                  "| target removed | where | entropic_reg | target_marginal | targets | perplexity |",
                  "|---|---|---|---|---|---|"]
        for s in sweep:
            val = f"{s['ppl']:.3f}" if s["ppl"] == s["ppl"] else f"error: {s.get('error', '')}"
            lines.append(f"| {s['target']} | {s.get('where', 'residual')} | {s['reg']} | {s['marginal']} | "
                         f"{s['targets']} | {val} |")
        lines.append("")
    lines += ["![perplexity vs removed parameters](dotresize.png)", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
