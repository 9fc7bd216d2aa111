"""Where batch-1 decode time goes, dense vs SliceGPT-25% (random Llama 1024 x 8, fp32, CPU).

Runs ``steps`` single-token forwards with the KV cache (no ``generate`` overhead)
under ``torch.profiler`` and groups self CPU time by operator: matrix products
(``aten::mm``/``addmm``/``linear``...), attention, norms and elementwise work, and the
rest. The matrix-product share is what slicing can shrink; everything else stays
the same or grows (the sliced model has two extra shortcut products per block).
Results: docs/decode_profile.json and docs/benchmarks.md.

    python benchmarks/decode_profile.py [--threads 1] [--steps 32] [--repeats 3]
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
import warnings
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile
from transformers import DynamicCache

from common import random_llama

import slimformer as sf

REPO = Path(__file__).resolve().parents[1]
MATMUL_OPS = {"aten::mm", "aten::addmm", "aten::bmm", "aten::matmul", "aten::linear", "aten::_mkl_linear"}


def group_of(op: str) -> str:
    if op in MATMUL_OPS:
        return "matmul"
    if "attention" in op or op in {"aten::_softmax", "aten::softmax"}:
        return "attention"
    return "other"


@torch.inference_mode()
def decode(model: torch.nn.Module, prompt: torch.Tensor, steps: int) -> float:
    """Seconds for ``steps`` cached single-token forwards after a prefill of ``prompt``."""
    cache = DynamicCache()
    out = model(input_ids=prompt, past_key_values=cache, use_cache=True)
    tok = out.logits[:, -1:].argmax(-1)
    t0 = time.perf_counter()
    for _ in range(steps):
        out = model(input_ids=tok, past_key_values=cache, use_cache=True)
        tok = out.logits[:, -1:].argmax(-1)
    return time.perf_counter() - t0


def profile_groups(model: torch.nn.Module, prompt: torch.Tensor, steps: int) -> tuple[dict[str, float], dict[str, Any]]:
    """ms per token by group, and the top operators (ms per token, calls per token)."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        decode(model, prompt, steps)
    groups: dict[str, float] = defaultdict(float)
    ops = []
    for ev in prof.key_averages():
        ms = ev.self_cpu_time_total / 1000.0 / steps  # ms per token
        groups[group_of(ev.key)] += ms
        ops.append((ms, ev.key, ev.count / steps))
    top = {k: {"ms": round(ms, 3), "calls": round(c, 1)} for ms, k, c in sorted(ops, reverse=True)[:12]}
    return dict(groups), top


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--steps", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", default=str(REPO / "docs" / "decode_profile.json"))
    args = p.parse_args()
    warnings.filterwarnings("ignore", message=".*past_key_values.*")  # renamed in later transformers 5.x
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    dense = random_llama()
    sliced = copy.deepcopy(dense)
    calib = torch.randint(0, 32000, (16, 256), generator=torch.Generator().manual_seed(0))
    sf.compress(sliced, sf.SliceGPTConfig(sparsity=0.25), calib, progress=False)
    models = {"dense": dense, "sliced": sliced}
    prompt = torch.randint(0, 32000, (1, 128), generator=torch.Generator().manual_seed(1))
    for m in models.values():  # warm-up
        decode(m, prompt, 4)
    secs: dict[str, list[float]] = {n: [] for n in models}
    for _ in range(args.repeats):  # interleaved
        for n, m in models.items():
            secs[n].append(decode(m, prompt, args.steps))
    ms = {n: 1000.0 * statistics.median(v) / args.steps for n, v in secs.items()}
    profiled = {n: profile_groups(m, prompt, args.steps) for n, m in models.items()}
    groups = {n: g for n, (g, _) in profiled.items()}
    res = {
        "settings": vars(args),
        "ms_per_token": ms,
        "measured_speedup": ms["dense"] / ms["sliced"],
        "profile_ms_per_token": groups,
        "matmul_speedup": groups["dense"]["matmul"] / groups["sliced"]["matmul"],
        "matmul_share_dense": groups["dense"]["matmul"] / sum(groups["dense"].values()),
        "profiled_speedup": sum(groups["dense"].values()) / sum(groups["sliced"].values()),
        "top_ops": {n: top for n, (_, top) in profiled.items()},
    }
    Path(args.json).write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
