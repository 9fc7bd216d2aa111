"""Reproduce docs/slicegpt_variants.md: default vs keep-tied vs shared-basis SliceGPT at equal
parameter count on stories260k, plus a short LoRA recovery fine-tune of each.

    OMP_NUM_THREADS=1 python benchmarks/slicegpt_variants.py [--steps 100] [--json docs/slicegpt_variants.json]

Calibration: 64 x 256 tokens of the TinyStories *train* prefix (seed 42). Budgets:
``target_params`` 0.2 and 0.3 (fraction of parameters removed, exact count). Perplexity:
the TinyStories *validation* prefix, non-overlapping 512-token windows, every token (as
docs/results.md). Fine-tuning: LoRA (rank 8, q/k/v/o/gate/up/down) on the train prefix only
(its last 10% held out for the in-run check), the same ``--steps`` for every variant
(``--minutes`` is only a safety limit; the JSON records the steps actually done). Nothing
is tuned on the validation text: every setting is fixed in this file.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import torch

import slimformer as sf
from slimformer.eval import perplexity

SHARED = Path(os.environ.get("SHARED", Path(__file__).resolve().parents[2] / "shared"))
TRAIN = SHARED / "data/tinystories/tinystories_train_prefix.txt"
VALID = SHARED / "data/tinystories/tinystories_valid_prefix.txt"
MODEL = SHARED / "models/stories260k"
BUDGETS = (0.2, 0.3)
VARIANTS: dict[str, dict[str, Any]] = {
    "default": {},
    "keep_tied": {"keep_tied": True},
    "shared": {"basis": "shared", "slice_head": True},
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=100, help="fine-tuning steps per run (the same for every variant)")
    ap.add_argument("--minutes", type=float, default=5.0, help="safety time limit per fine-tune (CPU)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-finetune", action="store_true")
    ap.add_argument("--json", default="docs/slicegpt_variants.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    dense, tok = sf.load_model(MODEL)
    valid = sf.data.tokenize_text(sf.data.load_text(str(VALID)).text, tok)
    calib = sf.data.load(str(TRAIN), tok, samples=64, seqlen=256, seed=42)

    def ppl(model: torch.nn.Module) -> float:
        return perplexity(model, tok, valid, seqlen=512, batch_size=16, progress=False).ppl

    records: dict[str, Any] = {
        "setup": {"model": "stories260k", "calibration": "tinystories train prefix, 64 x 256 tokens, seed 42",
                  "eval": f"tinystories valid prefix, {valid.numel()} tokens, seqlen 512",
                  "finetune": f"LoRA r8, lr 2e-3, batch 8 x 256 tokens, {args.steps} steps on the train prefix",
                  "torch": torch.__version__, "threads": args.threads},
        "dense": {"params": sf.count_params(dense), "ppl": ppl(dense)},
        "runs": [],
    }
    print(f"dense: {records['dense']['params']:,} params, ppl {records['dense']['ppl']:.3f}")
    for budget in BUDGETS:
        for name, extra in VARIANTS.items():
            model, _ = sf.load_model(MODEL)
            cfg = sf.SliceGPTConfig(target_params=budget, **extra)
            result = sf.compress(model, cfg, calib, progress=False, tokenizer=tok)
            rep = result.report
            rec: dict[str, Any] = {
                "variant": name, "target_params": budget, "params": rep["params_after"],
                "removed": rep["removed_fraction"], "widths": rep["widths"],
                "tied_head": result.plan.tied_head, "ppl": ppl(model), "seconds": rep["seconds"],
            }
            if not args.no_finetune:
                t0 = time.perf_counter()
                ft_cfg = sf.FinetuneConfig(steps=args.steps, lr=2e-3, batch=8, seqlen=256, seed=0, eval_tokens=20_000,
                                           max_minutes=args.minutes)
                ft = sf.finetune(result, str(TRAIN), ft_cfg, progress=False)
                rec["finetune"] = {"ppl": ppl(ft.model), "steps": ft.record["steps_done"],
                                   "tokens": ft.record["tokens_seen"], "seconds": round(time.perf_counter() - t0, 1),
                                   "params": sf.count_params(ft.model)}
            records["runs"].append(rec)
            print(json.dumps({k: v for k, v in rec.items() if k != "widths"}))
    Path(args.json).write_text(json.dumps(records, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
