"""Compression cost: wall time and peak RSS of SliceGPT, one forward per sublayer vs. two.

Each configuration runs in its own subprocess (so peak RSS is its own) with fixed
torch threads; "two-pass" re-runs every attention and MLP forward once more during
calibration, emulating a runner that executes each layer twice (the official
SliceGPT code calls the whole layer twice per block). Results: docs/benchmarks.md.

    python benchmarks/bench_compress.py [--repeats 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SHARED", REPO.parent / "shared"))

CHILD = r"""
import json, sys, time, torch
torch.set_num_threads(int(sys.argv[1]))
which, two_pass = sys.argv[2], sys.argv[3] == "1"
import slimformer as sf
from slimformer.runtime.modeling_slimformer import SlimBlock
if two_pass:
    attn, mlp = SlimBlock._attn, SlimBlock._mlp
    SlimBlock._attn = lambda self, h, kw: (attn(self, h, kw), attn(self, h, kw))[1]
    SlimBlock._mlp = lambda self, h: (mlp(self, h), mlp(self, h))[1]
torch.manual_seed(0)
if which == "stories260k":
    model, tok = sf.load_model(sys.argv[4])
    calib = sf.data.load(sys.argv[5], tok, samples=128, seqlen=256, seed=0)
else:
    from transformers import LlamaConfig, LlamaForCausalLM
    cfg = LlamaConfig(hidden_size=1024, intermediate_size=2816, num_hidden_layers=8, num_attention_heads=16,
                      num_key_value_heads=16, vocab_size=32000, max_position_embeddings=2048)
    model = LlamaForCausalLM(cfg).eval()
    calib = torch.randint(0, 32000, (32, 512), generator=torch.Generator().manual_seed(0))
from slimformer.memory import rss_mb
rss0 = rss_mb()
t0 = time.perf_counter()
r = sf.compress(model, sf.SliceGPTConfig(sparsity=0.25), calib, batch_size=8, progress=False)
dt = time.perf_counter() - t0
print(json.dumps({"seconds": dt, "peak_rss_mb": r.report["peak_rss_mb"], "rss_before_mb": rss0,
                  "params_before": r.report["params_before"], "params_after": r.report["params_after"]}))
"""


def run(which: str, two_pass: bool, threads: int) -> dict:
    args = [sys.executable, "-c", CHILD, str(threads), which, "1" if two_pass else "0",
            str(SHARED / "models" / "stories260k"), str(SHARED / "data" / "tinystories" / "tinystories_train_prefix.txt")]
    out = subprocess.run(args, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", default=str(REPO / "docs" / "bench_compress.json"))
    args = p.parse_args()
    results = {}
    for which in ("stories260k", "llama-1024x8"):
        runs: dict[str, list[dict]] = {"one-pass": [], "two-pass": []}
        for _ in range(args.repeats):  # interleaved, so machine noise hits both alike
            for mode in runs:
                runs[mode].append(run(which, mode == "two-pass", args.threads))
        row = {}
        for mode, rs in runs.items():
            secs = [r["seconds"] for r in rs]
            row[mode] = {"median_s": statistics.median(secs), "min_s": min(secs), "max_s": max(secs),
                         "peak_rss_mb": statistics.median(r["peak_rss_mb"] for r in rs),
                         "rss_before_mb": statistics.median(r["rss_before_mb"] for r in rs)}
        row["ratio_one_over_two"] = row["one-pass"]["median_s"] / row["two-pass"]["median_s"]
        row["params"] = [runs["one-pass"][0]["params_before"], runs["one-pass"][0]["params_after"]]
        results[which] = row
        print(which, json.dumps(row, indent=1))
    Path(args.json).write_text(json.dumps({"threads": args.threads, "repeats": args.repeats, **results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
