"""Reproduce docs/disp.md: DISP-LLM vs SliceGPT, FASP and MoDeGPT at equal removed parameters.

Every method gets the same budget through ``target_params`` (exact parameter count); the
evaluation text, windows and calibration windows are those of ``benchmarks/fasp.py``
(stories260k: TinyStories train prefix for calibration, valid prefix for perplexity;
opt-fixture: WikiText-2 valid / test). DISP trains its hypernetwork on the calibration
windows on the CPU (``--steps`` steps of ``--batch`` windows); the row records the
training steps, the training seconds, the final LM loss and the logit offset that made
the budget exact.

    python benchmarks/disp.py [--threads 1] [--fractions 0.2 0.4] [--steps 400] [--models stories260k]   # docs/disp.json
    python benchmarks/disp.py --render                                              # Markdown tables
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Callable

import torch

import slimformer as sf

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fasp import SETUPS, SHARED, ppl_table, run_model as fasp_run_model  # noqa: E402  (same data, windows and evaluation as the FASP benchmark)

REPO = Path(__file__).resolve().parents[1]


def methods(steps: int, batch: int, seqlen: int | None, lam: float, lr: float) -> dict[str, Callable[[float], Any]]:
    return {
        "disp": lambda f: sf.DISPConfig(target_params=f, steps=steps, batch=batch, seqlen=seqlen, lam=lam,
                                        learning_rate=lr),
        "slicegpt": lambda f: sf.SliceGPTConfig(target_params=f),
        "fasp": lambda f: sf.FASPConfig(target_params=f),
        "fasp (heads)": lambda f: sf.FASPConfig(target_params=f, attention="heads"),
        "modegpt (global)": lambda f: sf.MoDeGPTConfig(target_params=f),
    }


def disp_fields(method: str, rep: dict[str, Any]) -> dict[str, Any]:
    """The training/budget fields of a DISP row (empty for the other methods)."""
    if method != "disp":
        return {}
    return dict(steps=rep["steps"], train_seconds=rep["train_seconds"], final_lm_loss=rep["final_lm_loss"],
                final_r=rep["final_r"], p=rep["p"], budget_adjustment=rep["budget_adjustment"],
                kept_widths=rep["kept_widths"], config={k: v for k, v in rep["config"].items() if k != "checkpoint"})


def run_model(name: str, fractions: list[float], table: dict[str, Callable[[float], Any]]) -> dict[str, Any]:
    return fasp_run_model(name, fractions, table, extra=disp_fields)


def tables(data: dict[str, Any]) -> str:
    """Markdown tables (one per model) from the JSON this script writes."""
    lines = []
    for name, res in data["models"].items():
        lines += ppl_table(name, res)
        lines += ["", "DISP training (per target): steps, training seconds, mean LM loss of the last 20 steps, "
                  "kept fraction r of attention + MLP parameters at the last step vs its target p, and the "
                  "global logit offset that made the budget exact (removed fraction before -> after).", "",
                  "| target | steps | train s | final LM loss | r / p | offset | removed before -> after |",
                  "|---|---|---|---|---|---|---|"]
        for r in res["rows"]:
            if r["method"] != "disp" or "error" in r:
                continue
            b = r["budget_adjustment"]
            lines.append(f"| {r['target']:.2f} | {r['steps']} | {r['train_seconds']:.1f} | {r['final_lm_loss']:.3f} | "
                         f"{r['final_r']:.3f} / {r['p']:.3f} | {b['logit_offset']:+.3f} | "
                         f"{b['removed_before_offset']:.3f} -> {r['removed']:.3f} |")
        lines += ["", "DISP kept widths per block (attn_in / attn_out / mlp_in / mlp_mid / mlp_out) at the highest target:",
                  ""]
        top = [r for r in res["rows"] if r["method"] == "disp" and "error" not in r]
        if top:
            r = max(top, key=lambda r: r["target"])
            for i, w in enumerate(r["kept_widths"]):
                lines.append(f"* block {i}: {w['attn_in']} / {w['attn_out']} / {w['mlp_in']} / {w['mlp_mid']} / "
                             f"{w['mlp_out']}")
        lines.append("")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--fractions", type=float, nargs="+", default=[0.2, 0.4])
    p.add_argument("--models", nargs="+", default=list(SETUPS), choices=list(SETUPS))
    p.add_argument("--steps", type=int, default=400, help="DISP training steps")
    p.add_argument("--batch", type=int, default=4, help="DISP windows per step")
    p.add_argument("--seqlen", type=int, default=256, help="DISP tokens per training window")
    p.add_argument("--lam", type=float, default=6.0, help="DISP budget regulariser weight")
    p.add_argument("--learning-rate", type=float, default=3e-3,
                   help="DISP AdamW learning rate (3e-3: best of 1e-3/3e-3/1e-2 for a few hundred steps on stories260k)")
    p.add_argument("--only", nargs="*", default=None, metavar="METHOD", help="run only these methods")
    p.add_argument("--json", default=str(REPO / "docs" / "disp.json"))
    p.add_argument("--render", action="store_true", help="only print the Markdown tables of an existing --json")
    args = p.parse_args()
    if args.render:
        print(tables(json.loads(Path(args.json).read_text())))
        return
    torch.set_num_threads(args.threads)
    table = methods(args.steps, args.batch, args.seqlen, args.lam, args.learning_rate)
    if args.only:
        table = {k: v for k, v in table.items() if k in args.only}
    path = Path(args.json)
    data = json.loads(path.read_text()) if path.exists() else {"models": {}}
    for name in args.models:  # merged per model, so the two models can run as separate processes
        data["models"][name] = run_model(name, args.fractions, table)
        data.update(threads=args.threads, versions=sf.api.library_versions())
        path.write_text(json.dumps(data, indent=2) + "\n")
    print(tables(data))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
