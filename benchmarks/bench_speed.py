"""Speed of a SliceGPT-25% model vs. its dense original, side by side in one process.

Random Llama (hidden 1024, 8 layers, MLP 2816, vocab 32000, fp32, CPU), sliced 25%
with random-token calibration (speed does not depend on the weights' values).
Settings are fixed threads, warm-up, interleaved repeats; see slimformer.eval.speed.

    python benchmarks/bench_speed.py [--threads 2] [--repeats 7]
"""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

import torch
from common import random_llama

import slimformer as sf
from slimformer.eval.speed import SpeedSettings, compare_speed

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--json", default=str(REPO / "docs" / "bench_speed.json"))
    args = p.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    dense = random_llama()
    sliced = copy.deepcopy(dense)
    calib = torch.randint(0, 32000, (16, 256), generator=torch.Generator().manual_seed(0))
    result = sf.compress(sliced, sf.SliceGPTConfig(sparsity=0.25), calib, progress=False)
    out = {"compress_report": {k: result.report[k] for k in ("params_before", "params_after", "removed_fraction")}}
    for name, st in {
        "decode_b1": SpeedSettings(batch=1, seqlen=128, new_tokens=64, warmup=1, repeats=args.repeats, threads=args.threads),
        "prefill_b4x512": SpeedSettings(batch=4, seqlen=512, new_tokens=8, warmup=1, repeats=args.repeats, threads=args.threads),
    }.items():
        res = compare_speed({"dense": dense, "slicegpt25": sliced}, st)
        out[name] = res
        print(name, json.dumps(res["speedup"]))
    Path(args.json).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
