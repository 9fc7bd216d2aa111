"""`make demo`: compress a real model (SliceGPT unless METHOD=...), evaluate before/after, print the table."""

from __future__ import annotations

import argparse
import dataclasses
import time

import torch

import slimformer as sf
from slimformer.eval import perplexity


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model", required=True)
    p.add_argument("--calib", required=True)
    p.add_argument("--eval", required=True)
    p.add_argument("--sparsity", type=float, default=0.25)
    p.add_argument("--method", default="slicegpt", help="any registered method, e.g. modegpt, fasp, prunenet, disp")
    p.add_argument("--calib-samples", type=int, default=128)
    p.add_argument("--calib-seqlen", type=int, default=256)
    p.add_argument("--eval-seqlen", type=int, default=512)
    p.add_argument("--out", default="demo-out")
    args = p.parse_args()
    torch.manual_seed(0)

    model, tok = sf.load_model(args.model, dtype="float32")
    dense = perplexity(model, tok, args.eval, seqlen=args.eval_seqlen, batch_size=8)
    spec = sf.methods.get_method(args.method)
    calib = None
    if spec.accepts_calibration:
        calib = sf.data.load(args.calib, tok, samples=args.calib_samples, seqlen=args.calib_seqlen, seed=0)
    fields = {f.name for f in dataclasses.fields(spec.config_cls)}
    # methods without a per-structure sparsity (disp) take it as the fraction of parameters to remove
    budget = {"sparsity": args.sparsity} if "sparsity" in fields else {"target_params": args.sparsity}
    result = sf.compress(model, spec.config_cls(**budget), calib, tokenizer=tok, seed=0)
    out = result.save(args.out, overwrite=True)
    t0 = time.perf_counter()
    reloaded, _ = sf.load_model(out)
    load_s = time.perf_counter() - t0
    sliced = perplexity(reloaded, tok, args.eval, seqlen=args.eval_seqlen, batch_size=8)
    r = result.report
    rows = [
        ("model", "params", "removed", f"ppl@{args.eval_seqlen}", "tokens"),
        ("dense", f"{r['params_before']:,}", "-", f"{dense.ppl:.3f}", f"{dense.tokens:,}"),
        (f"{args.method} {args.sparsity:.0%}", f"{r['params_after']:,}", f"{r['removed_fraction']:.2%}",
         f"{sliced.ppl:.3f}", f"{sliced.tokens:,}"),
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    print()
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)))
    print(f"\ncompression {r['seconds']:.1f}s, peak RSS {r['peak_rss_mb']:.0f} MB; saved to {out} "
          f"(reloaded in {load_s:.2f}s)")
    print("per layer (residual in, MLP width): " + ", ".join(f"{l['d_in']}/{l['mlp']}" for l in r["layers"]))


if __name__ == "__main__":
    main()
