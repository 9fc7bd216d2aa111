"""Scale: peak RSS and wall time of in-memory vs CPU-offload vs disk-offload compression,
and 1 vs 2 data-parallel processes, on a random Llama (hidden 2048, 8 layers, MLP 2048,
vocab 512; 237 M parameters = 0.95 GB in fp32).

Every run is a fresh ``slimformer compress`` subprocess (CLI, as a user runs it) with
1 torch thread per process; memory comes from the run's own report: ``peak_rss_mb``
(VmHWM) minus ``rss_at_start_mb`` for the offloaded runs (the peak is reset when
compression starts) and minus ``rss_before_load_mb`` for the in-memory runs (the
CLI resets the peak just before loading the model). The runs are interleaved over ``--repeats``
rounds and the medians reported (the machine is shared). Writes docs/offload.json;
docs/scale.md quotes it, with a paper estimate for Llama-2-70B from the measured
per-layer costs.

    python benchmarks/offload.py [--repeats 2] [--samples 32] [--seqlen 256] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SHARED", REPO.parent / "shared"))
CALIB = SHARED / "data" / "tinystories" / "tinystories_train_prefix.txt"
SHAPE = dict(hidden=2048, mlp=2048, heads=16, layers=8, vocab=512)


def build(directory: Path) -> int:
    """Save the random Llama (safetensors, seed 0) with the stories260k tokenizer; returns its bytes."""
    import torch
    from transformers import AutoTokenizer

    sys.path.insert(0, str(REPO / "benchmarks"))
    from common import random_llama

    torch.manual_seed(0)
    model = random_llama(**SHAPE)
    model.save_pretrained(directory)
    AutoTokenizer.from_pretrained(SHARED / "models" / "stories260k").save_pretrained(directory)
    return sum(p.numel() * p.element_size() for p in model.parameters())


def run(src: Path, out: Path, mode: str, procs: int, samples: int, seqlen: int, method: str) -> dict:
    """One compression in a fresh process (or ``procs`` torchrun ranks); returns its report + wall time."""
    cmd = [sys.executable, "-m", "slimformer.cli"]
    if procs > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={procs}",
               "-m", "slimformer.cli"]
    cmd += ["compress", str(src), "--method", method, "--calib", str(CALIB), "--calib-samples", str(samples),
            "--calib-seqlen", str(seqlen), "--batch-size", "8", "--out", str(out), "--overwrite", "--no-progress"]
    cmd += ["--sparsity", "0.25"]
    if mode != "memory":
        cmd += ["--offload", mode]
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    report = json.loads((out / "slimformer_report.json").read_text())
    return {"wall_s": wall, "seconds": report["seconds"], "peak_rss_mb": report["peak_rss_mb"],
            "rss_at_start_mb": report["rss_at_start_mb"], "rss_before_load_mb": report.get("rss_before_load_mb"),
            "params_after": report["params_after"]}


def same_weights(a: Path, b: Path) -> float:
    """Max |difference| between the tensors of two saved directories (they must have the same keys)."""
    from safetensors.torch import load_file

    def load(d: Path) -> dict:
        out = {}
        for f in sorted(d.glob("*.safetensors")):
            out.update(load_file(f))
        return out

    x, y = load(a), load(b)
    if x.keys() != y.keys():
        raise AssertionError(f"different tensors: {sorted(set(x) ^ set(y))[:5]}")
    return max(float((x[k].double() - y[k].double()).abs().max()) for k in x)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--samples", type=int, default=32)
    ap.add_argument("--seqlen", type=int, default=256)
    ap.add_argument("--method", default="slicegpt")
    ap.add_argument("--keep", type=Path, default=None, help="work directory to keep (default: a temporary one)")
    args = ap.parse_args()
    work = args.keep or Path(tempfile.mkdtemp(prefix="slimformer-offload-"))
    work.mkdir(parents=True, exist_ok=True)
    src = work / "dense"
    nbytes = build(src) if not (src / "config.json").exists() else None
    if nbytes is None:
        nbytes = sum(f.stat().st_size for f in src.glob("*.safetensors"))
    runs = [("memory", 1), ("cpu", 1), ("disk", 1), ("memory", 2), ("disk", 2)]
    results: dict[str, list[dict]] = {f"{m}/{p}": [] for m, p in runs}
    for r in range(args.repeats):
        for mode, procs in runs:
            key = f"{mode}/{procs}"
            res = run(src, work / key.replace("/", "-"), mode, procs, args.samples, args.seqlen, args.method)
            results[key].append(res)
            print(f"round {r} {key}: {res}", flush=True)
    diffs = {k: same_weights(work / "memory-1", work / k.replace("/", "-")) for k in results if k != "memory/1"}
    summary = {}
    for key, rs in results.items():
        base = [x["rss_before_load_mb"] if key.startswith("memory") else x["rss_at_start_mb"] for x in rs]
        summary[key] = {
            "seconds_median": statistics.median(x["seconds"] for x in rs),
            "wall_s_median": statistics.median(x["wall_s"] for x in rs),
            "peak_rss_mb_median": statistics.median(x["peak_rss_mb"] for x in rs),
            "growth_mb_median": statistics.median(x["peak_rss_mb"] - b for x, b in zip(rs, base)),
            "runs": rs,
        }
    layer_mb = (nbytes - 2 * SHAPE["vocab"] * SHAPE["hidden"] * 4) / SHAPE["layers"] / 2**20
    act_mb = args.samples * args.seqlen * SHAPE["hidden"] * 4 / 2**20
    out = {
        "model": {"shape": SHAPE, "bytes": nbytes, "mb": nbytes / 2**20, "layer_mb": layer_mb},
        "calibration": {"samples": args.samples, "seqlen": args.seqlen, "boundary_activations_mb": act_mb},
        "method": args.method, "sparsity": 0.25, "repeats": args.repeats, "threads_per_process": 1,
        "max_abs_weight_diff_vs_memory_1": diffs,
        "results": summary,
    }
    (REPO / "docs" / "offload.json").write_text(json.dumps(out, indent=2) + "\n")
    for key, s in summary.items():
        print(f"{key:10s} compress {s['seconds_median']:7.1f}s  wall {s['wall_s_median']:7.1f}s  "
              f"peak RSS {s['peak_rss_mb_median']:7.0f} MB  growth {s['growth_mb_median']:7.0f} MB")
    print("max |dW| vs in-memory 1 process:", diffs)
    if args.keep is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
