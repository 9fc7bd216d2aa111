"""Reproduce docs/results.md: SliceGPT on the real tiny models in ../shared/models.

    python benchmarks/results_slicegpt.py > /tmp/results.md
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

import slimformer as sf
from slimformer.eval import perplexity

SHARED = Path(os.environ.get("SHARED", Path(__file__).resolve().parents[2] / "shared"))
OFFICIAL = {0.1: "8.23", 0.2: "20.5", 0.3: "53.9", 0.0: "5.09 (not exact)"}


def stories() -> None:
    model_dir = SHARED / "models" / "stories260k"
    _, tok = sf.load_model(model_dir)
    calib = sf.data.load(str(SHARED / "data/tinystories/tinystories_train_prefix.txt"), tok, samples=128, seqlen=256, seed=42)
    valid = sf.data.tokenize_text(sf.data.load_text(str(SHARED / "data/tinystories/tinystories_valid_prefix.txt")).text, tok)
    dense, _ = sf.load_model(model_dir)
    d = perplexity(dense, tok, valid, seqlen=512, batch_size=16, progress=False)
    print(f"dense ppl {d.ppl:.3f} on {d.tokens:,} tokens; params {sf.count_params(dense):,}\n")
    print("| sparsity | kept width | params after | removed | slimformer ppl | official ppl | seconds |")
    print("|---|---|---|---|---|---|---|")
    for s in (0.0, 0.1, 0.2, 0.3):
        model, _ = sf.load_model(model_dir)
        r = sf.compress(model, sf.SliceGPTConfig(sparsity=s), calib, progress=False)
        p = perplexity(model, tok, valid, seqlen=512, batch_size=16, progress=False)
        print(f"| {s} | {r.report['kept_width']} | {r.report['params_after']:,} | {100 * r.report['removed_fraction']:.1f}% "
              f"| {p.ppl:.3f} | {OFFICIAL[s]} | {r.report['seconds']:.2f} |")


def opt() -> None:
    model, tok = sf.load_model(SHARED / "models" / "opt-fixture")
    test = sf.data.tokenize_text(sf.data.load_text(str(SHARED / "data/wikitext2/wiki.test.raw")).text, tok)[:40_000]
    dense = perplexity(model, tok, test, seqlen=256, batch_size=16, progress=False)
    calib = sf.data.load(str(SHARED / "data/wikitext2/wiki.valid.raw"), tok, samples=64, seqlen=256, seed=0)
    r = sf.compress(model, sf.SliceGPTConfig(sparsity=0.25), calib, progress=False)
    sliced = perplexity(model, tok, test, seqlen=256, batch_size=16, progress=False)
    print(f"\nopt-fixture: dense ppl {dense.ppl:.2f} -> SliceGPT 25% (width {r.report['kept_width']}) {sliced.ppl:.2f} "
          f"on {sliced.tokens:,} tokens; params {r.report['params_before']:,} -> {r.report['params_after']:,} "
          f"({100 * r.report['removed_fraction']:.1f}% removed), {r.report['seconds']:.2f}s")


if __name__ == "__main__":
    torch.manual_seed(0)
    stories()
    opt()
