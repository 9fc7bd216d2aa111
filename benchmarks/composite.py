"""Reproduce docs/composite.md: one budget split between residual slicing and head/MLP pruning,
against the single methods at the same ``target_params``, all measured in the same run.

For each model and budget: run ``composite`` (default splits), then evaluate every split's
candidate on the evaluation text (each re-run on the calibration windows composite gave it, so
its model is the one composite scored), and the single methods (FASP with whole heads, uniform
and global allocation; SliceGPT uniform and layer-redundancy; MoDeGPT), each on all the
calibration windows, as a user running that method alone would. The evaluation text is read
only after every choice was made.

    python benchmarks/composite.py                 # writes docs/composite.json and prints the tables
    python benchmarks/composite.py --render        # the tables from docs/composite.json
    # the two variants in docs/composite.md (added to the same file):
    python benchmarks/composite.py --models stories260k --keep-tied --splits 0,0.1,0.25,0.5,1 --no-singles --append
    python benchmarks/composite.py --models opt-fixture --schedule layer-redundancy --prune-schedule global \
        --no-singles --append
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from typing import Any, Callable

import torch

import slimformer as sf
from common import REPO, SETUPS, SHARED, eval_ids, eval_ppl, load_real  # benchmarks/common.py
from slimformer.methods._shared.selection import split_calibration
from slimformer.methods.base import Runtime
from slimformer.methods.composite import CompositeConfig
from slimformer.methods.composite.apply import run_split

OUT = REPO / "docs" / "composite.json"


#: the single methods at the same budget (label -> config factory)
SINGLES: dict[str, Callable[[float], Any]] = {
    "fasp:attention=heads": lambda f: sf.FASPConfig(target_params=f, attention="heads"),
    "fasp:attention=heads,schedule=global": lambda f: sf.FASPConfig(target_params=f, attention="heads",
                                                                    schedule="global"),
    "slicegpt": lambda f: sf.SliceGPTConfig(target_params=f),
    "slicegpt:schedule=layer-redundancy": lambda f: sf.SliceGPTConfig(target_params=f, schedule="layer-redundancy"),
    "modegpt": lambda f: sf.MoDeGPTConfig(target_params=f),
}


def run(name: str, target: float, singles: bool = True, **settings: Any) -> dict[str, Any]:
    """Composite (every split's candidate evaluated) and the single methods on one model at one budget.

    ``settings``: CompositeConfig fields other than the target (e.g. ``keep_tied=True``, ``splits``).
    """
    model_dir = SHARED / "models" / name
    model, tok, calib = load_real(name)
    config = CompositeConfig(target_params=target, **settings)
    t0 = time.perf_counter()
    result = sf.compress(model, config, calib, progress=False)
    comp = result.report["composite"]
    seconds = time.perf_counter() - t0
    ids = eval_ids(name, tok)

    def ppl(m: torch.nn.Module) -> float:
        return eval_ppl(m, tok, ids, name)

    out: dict[str, Any] = {"target": target, "settings": settings, "chosen_split": comp["chosen_split"],
                           "composite_eval_ppl": ppl(model),
                           "composite_seconds": round(seconds, 1), "composite_removed": result.report["removed_fraction"],
                           "dense_heldout_ppl": comp["dense_heldout_ppl"], "holdout_windows": comp["holdout_windows"],
                           "candidates": [], "singles": []}
    train, _ = split_calibration(calib.input_ids, config.holdout)
    dense, _ = sf.load_model(model_dir, dtype="float32")
    runtime = Runtime(torch.device("cpu"), 8, progress=False)
    for rec in comp["candidates"]:
        row = {k: rec.get(k) for k in ("split", "fasp_target", "slicegpt_target", "removed_fraction", "heldout_ppl",
                                       "seconds", "error", "skipped")}
        if "heldout_ppl" in rec:
            work = copy.deepcopy(dense)
            run_split(work, config, rec["split"], train, runtime, sf.count_params(dense))
            row["eval_ppl"] = ppl(work)
        out["candidates"].append(row)
        print(name, target, json.dumps(row), flush=True)
    # --refit: the chosen split again, on all the calibration windows (what CompositeConfig(refit=True) returns)
    work = copy.deepcopy(dense)
    t1 = time.perf_counter()
    run_split(work, config, comp["chosen_split"], calib.input_ids, runtime, sf.count_params(dense))
    out["refit"] = {"removed_fraction": 1 - sf.count_params(work) / sf.count_params(dense), "eval_ppl": ppl(work),
                    "seconds": round(time.perf_counter() - t1, 1)}
    print(name, target, "refit", json.dumps(out["refit"]), flush=True)
    for label, make in (SINGLES.items() if singles else ()):
        m, _ = sf.load_model(model_dir, dtype="float32")
        t1 = time.perf_counter()
        try:
            rep = sf.compress(m, make(target), calib, progress=False).report
        except ValueError as exc:
            out["singles"].append({"label": label, "error": str(exc).splitlines()[0]})
            continue
        row = {"label": label, "removed_fraction": rep["removed_fraction"], "eval_ppl": ppl(m),
               "seconds": round(time.perf_counter() - t1, 1)}
        out["singles"].append(row)
        print(name, target, json.dumps(row), flush=True)
    ok = [r for r in out["singles"] if "eval_ppl" in r]
    if ok:
        best = min(ok, key=lambda r: r["eval_ppl"])
        out["best_single"] = best["label"]
        out["best_single_eval_ppl"] = best["eval_ppl"]
        out["composite_beats_best_single"] = out["composite_eval_ppl"] < best["eval_ppl"]
        out["refit_beats_best_single"] = out["refit"]["eval_ppl"] < best["eval_ppl"]
    print(name, target, "composite chose split", out["chosen_split"], "eval ppl", out["composite_eval_ppl"], flush=True)
    return out


def _f(x: Any, fmt: str = "{:.3f}") -> str:
    return "-" if x is None else fmt.format(x)


def render(res: dict[str, Any]) -> str:
    """Markdown tables of docs/composite.json."""
    lines = []
    for key, r in res["runs"].items():
        extra = "".join(f", `{k}={v}`" for k, v in r.get("settings", {}).items())
        lines.append(f"### {key.split(' @ ')[0]}: {r['target']:.0%} of parameters removed{extra}\n")
        verdict = ""
        if "best_single" in r:
            verdict = (f" Best single method on the evaluation text: **{r['best_single']}** "
                       f"({r['best_single_eval_ppl']:.3f}); composite "
                       f"{'beats it' if r['composite_beats_best_single'] else 'does not beat it'}; "
                       f"with `refit` (the chosen split re-run on all windows: eval ppl "
                       f"{r['refit']['eval_ppl']:.3f}) it "
                       f"{'beats it' if r['refit_beats_best_single'] else 'does not beat it'}.")
        if not verdict and "refit" in r:
            verdict = f" With `refit` (the chosen split re-run on all windows): eval ppl {r['refit']['eval_ppl']:.3f}."
        lines.append(f"composite chose slicing share **{r['chosen_split']:g}** (removed {r['composite_removed']:.1%}, "
                     f"eval ppl **{r['composite_eval_ppl']:.3f}**) in {r['composite_seconds']:.0f} s "
                     f"(held-out windows: {r['holdout_windows']}, dense held-out ppl "
                     f"{r['dense_heldout_ppl']:.3f}).{verdict}\n")
        lines.append("| slicing share | FASP target | SliceGPT target | removed | held-out calib ppl | eval ppl | s |")
        lines.append("|---:|---:|---:|---:|---:|---:|---:|")
        for c in r["candidates"]:
            held = _f(c.get("heldout_ppl")) if c.get("heldout_ppl") else (c.get("error") or c.get("skipped") or "-")
            lines.append(f"| {c['split']:g} | {_f(c.get('fasp_target'), '{:.4f}')} | "
                         f"{_f(c.get('slicegpt_target'), '{:.4f}')} | {_f(c.get('removed_fraction'), '{:.1%}')} | "
                         f"{held} | {_f(c.get('eval_ppl'))} | {_f(c.get('seconds'), '{:.1f}')} |")
        if r["singles"]:
            lines.append("\nSingle methods (all calibration windows):\n")
            lines.append("| method | removed | eval ppl | s |")
            lines.append("|---|---:|---:|---:|")
            for row in r["singles"]:
                lines.append(f"| {row['label']} | {_f(row.get('removed_fraction'), '{:.1%}')} | "
                             f"{_f(row.get('eval_ppl')) if 'eval_ppl' in row else row.get('error')} | "
                             f"{_f(row.get('seconds'), '{:.1f}')} |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=list(SETUPS))
    ap.add_argument("--targets", nargs="+", type=float, default=[0.3])
    ap.add_argument("--render", action="store_true")
    ap.add_argument("--splits", default=None, help="composite splits (default: CompositeConfig's)")
    ap.add_argument("--keep-tied", action="store_true", help="composite with keep_tied (RMSNorm models)")
    ap.add_argument("--schedule", default=None, help="composite's slicing schedule (default: uniform)")
    ap.add_argument("--prune-schedule", default=None, help="composite's pruning schedule (default: uniform)")
    ap.add_argument("--no-singles", action="store_true", help="composite only (no single-method rows)")
    ap.add_argument("--append", action="store_true", help="add to docs/composite.json instead of replacing it")
    args = ap.parse_args()
    if args.render:
        print(render(json.loads(OUT.read_text())))
        return
    torch.set_num_threads(1)
    res = json.loads(OUT.read_text()) if args.append and OUT.exists() else \
        {"date": time.strftime("%Y-%m-%d"), "torch": torch.__version__, "runs": {}}
    settings: dict[str, Any] = {}
    if args.splits:
        settings["splits"] = args.splits
    if args.keep_tied:
        settings["keep_tied"] = True
    for name in ("schedule", "prune_schedule"):
        if getattr(args, name):
            settings[name] = getattr(args, name)
    suffix = "".join(f", {k}={v}" for k, v in settings.items())
    for name in args.models:
        for target in args.targets:
            res["runs"][f"{name} @ {target:g}{suffix}"] = run(name, target, singles=not args.no_singles, **settings)
            OUT.write_text(json.dumps(res, indent=2) + "\n")
    print(render(res))


if __name__ == "__main__":
    main()
