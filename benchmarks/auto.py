"""Reproduce docs/auto.md: does `--method auto`'s choice on held-out *calibration* windows pick
the candidate that is best on the *evaluation* text?

For each model and budget: run ``auto`` (default candidates), then evaluate every candidate's
model on the evaluation text (each candidate re-run on the same calibration windows auto gave
it, so its model is the one auto scored). The evaluation text is read only after every choice
was made.

    python benchmarks/auto.py            # writes docs/auto.json and prints the table
"""

from __future__ import annotations

import json
import time
from typing import Any

import torch

import slimformer as sf
from common import REPO, SETUPS, SHARED, eval_ids, eval_ppl, load_real  # benchmarks/common.py
from slimformer.methods.auto import parse_candidates
from slimformer.methods.auto.apply import split_calibration

OUT = REPO / "docs" / "auto.json"



def run(name: str, target: float) -> dict[str, Any]:
    model, tok, calib = load_real(name)
    config = sf.AutoConfig(target_params=target)
    t0 = time.perf_counter()
    result = sf.compress(model, config, calib, progress=False)
    auto = result.report["auto"]
    auto_seconds = time.perf_counter() - t0
    ids = eval_ids(name, tok)

    def ppl(m: torch.nn.Module) -> float:
        return eval_ppl(m, tok, ids, name)

    train, _ = split_calibration(calib.input_ids, config.holdout)
    rows = []
    for (label, method, settings), rec in zip(parse_candidates(config.candidates), auto["candidates"]):
        candidate_ppl = None
        if "error" not in rec:
            m, _ = sf.load_model(SHARED / "models" / name, dtype="float32")
            cfg = sf.methods.get_method(method).config_cls(**settings, target_params=target)
            sf.compress(m, cfg, train, progress=False)
            candidate_ppl = ppl(m)
        rows.append({"label": label, "heldout_ppl": rec.get("heldout_ppl"), "eval_ppl": candidate_ppl,
                     "removed": rec.get("removed_fraction"), "seconds": rec.get("seconds"),
                     "error": rec.get("error")})
        print(name, json.dumps(rows[-1]), flush=True)
    out = {"target": target, "chosen": auto["chosen"], "auto_eval_ppl": ppl(result.model),
           "auto_seconds": auto_seconds, "dense_heldout_ppl": auto["dense_heldout_ppl"],
           "holdout_windows": auto["holdout_windows"], "rows": rows}
    best_eval = min((r for r in rows if r["eval_ppl"] is not None), key=lambda r: r["eval_ppl"])
    out["best_on_eval"] = best_eval["label"]
    print(name, "auto chose", out["chosen"], "best on eval:", out["best_on_eval"], flush=True)
    return out


def render(res: dict[str, Any]) -> str:
    lines = []
    for name, r in res["models"].items():
        lines.append(f"### {name}: {r['target']:.0%} of parameters removed\n")
        lines.append(f"auto chose **{r['chosen']}** (eval ppl {r['auto_eval_ppl']:.3f}) in {r['auto_seconds']:.0f} s; "
                     f"best on the evaluation text: **{r['best_on_eval']}**. Held-out windows: "
                     f"{r['holdout_windows']}.\n")
        lines.append("| candidate | removed | held-out calib ppl | eval ppl |")
        lines.append("|---|---:|---:|---:|")
        for row in r["rows"]:
            held = f"{row['heldout_ppl']:.3f}" if row["heldout_ppl"] else row.get("error") or "-"
            ev = "-" if row["eval_ppl"] is None else f"{row['eval_ppl']:.3f}"
            removed = "-" if row["removed"] is None else f"{row['removed']:.1%}"
            lines.append(f"| {row['label']} | {removed} | {held} | {ev} |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=list(SETUPS))
    ap.add_argument("--target", type=float, default=0.3)
    ap.add_argument("--render", action="store_true")
    args = ap.parse_args()
    if args.render:
        print(render(json.loads(OUT.read_text())))
        return
    torch.set_num_threads(1)
    res = {"date": time.strftime("%Y-%m-%d"), "torch": torch.__version__, "models": {}}
    for name in args.models:
        res["models"][name] = run(name, args.target)
    OUT.write_text(json.dumps(res, indent=2) + "\n")
    print(render(res))


if __name__ == "__main__":
    main()
