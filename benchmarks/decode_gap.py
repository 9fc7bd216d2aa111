"""Why batch-1 decode speeds up less than the FLOP ratio: measure the width-independent floor.

Three random Llamas with the same depth (8 layers) and vocabulary (32000), measured
interleaved in one process (fixed threads, warm-up, repeats):

* ``dense``: hidden 1024, MLP 2816 (as in the speed report);
* ``sliced``: ``dense`` sliced 25% by SliceGPT;
* ``floor``: hidden 64, MLP 176, one head - the same number of modules, kernel
  launches, Python calls, KV-cache bookkeeping and ``generate`` work per token,
  but almost no arithmetic.

If per-token time = floor + c * (matmul parameters), the sliced model's decode time
is predicted from the other two; the script prints the prediction next to the
measurement. Results: docs/benchmarks.md ("Decode speed-up vs FLOP ratio").

    python benchmarks/decode_gap.py [--threads 1] [--repeats 5]
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
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--json", default=str(REPO / "docs" / "decode_gap.json"))
    args = p.parse_args()
    torch.manual_seed(0)
    dense = random_llama()
    sliced = copy.deepcopy(dense)
    calib = torch.randint(0, 32000, (16, 256), generator=torch.Generator().manual_seed(0))
    sf.compress(sliced, sf.SliceGPTConfig(sparsity=0.25), calib, progress=False)
    floor = random_llama(hidden=64, mlp=176, heads=1)
    settings = SpeedSettings(batch=1, seqlen=128, new_tokens=64, warmup=1, repeats=args.repeats, threads=args.threads)
    res = compare_speed({"dense": dense, "sliced": sliced, "floor": floor}, settings)
    ms = {n: res["models"][n]["decode_ms_per_token"]["median"] for n in res["models"]}
    mm = {n: res["models"][n]["matmul_params"] for n in res["models"]}
    slope = (ms["dense"] - ms["floor"]) / (mm["dense"] - mm["floor"])
    predicted = ms["floor"] + slope * (mm["sliced"] - mm["floor"])
    res["analysis"] = {
        "decode_ms_per_token": ms,
        "matmul_params": mm,
        "floor_share_of_dense": ms["floor"] / ms["dense"],
        "predicted_sliced_ms": predicted,
        "predicted_decode_speedup": ms["dense"] / predicted,
        "measured_decode_speedup": ms["dense"] / ms["sliced"],
        "ideal_speedup_1_over_flop_ratio": mm["dense"] / mm["sliced"],
    }
    Path(args.json).write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps(res["analysis"], indent=2))


if __name__ == "__main__":
    main()
