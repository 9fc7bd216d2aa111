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


PHASES_CHILD = r"""
import json, sys, time, torch
torch.set_num_threads(1)
import slimformer as sf
import slimformer.calib.offload as off
import slimformer.calib.rotate_pass as res
import slimformer.methods.slicegpt.apply as sa
import slimformer.methods._shared.residual as shared_residual
times = {}
def timed(owner, name, key):
    f = getattr(owner, name)
    def w(*a, **k):
        t0 = time.perf_counter()
        try:
            return f(*a, **k)
        finally:
            times[key] = times.get(key, 0.0) + time.perf_counter() - t0
    setattr(owner, name, w)
timed(off.CheckpointSource, "read", "read weights")
timed(off.LayerStore, "release", "write block")
import slimformer.core.fuse as fz
timed(fz, "fuse_block", "fuse")
timed(off, "trim_heap", "trim heap")
timed(res.Covariance, "update", "covariance")
timed(sa, "pca_basis", "eigh")
for n in ("apply_block_input_basis", "apply_block_mid_basis", "apply_block_output_basis"):
    timed(res, n, "rotate")
timed(shared_residual, "rotate_and_slice", "total layer pass")
ids = torch.randint(0, 512, (int(sys.argv[3]), int(sys.argv[4])), generator=torch.Generator().manual_seed(0))
t0 = time.perf_counter()
sf.compress_offloaded(sys.argv[1], sf.SliceGPTConfig(sparsity=0.25), ids, sys.argv[2], offload="disk",
                      batch_size=8, progress=False, overwrite=True)
times["compress_offloaded"] = time.perf_counter() - t0
print(json.dumps(times))
"""


def phases(src: Path, out: Path, samples: int, seqlen: int) -> dict:
    """Seconds per phase of one disk-offloaded SliceGPT run (1 thread), summed over the 8 blocks."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", PHASES_CHILD, str(src), str(out), str(samples), str(seqlen)],
                          capture_output=True, text=True, env=env, cwd=REPO)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-3000:])
    t = json.loads(proc.stdout.strip().splitlines()[-1])
    t["forward (rest of the layer pass)"] = t["total layer pass"] - sum(
        t.get(k, 0.0) for k in ("read weights", "fuse", "write block", "covariance", "eigh", "rotate", "trim heap"))
    return t


def estimate_70b(measured: dict, samples: int, seqlen: int) -> dict:
    """Scale the measured per-block phase costs to Llama-2-70B (a paper estimate; see docs/scale.md).

    Every phase is scaled by the ratio of its operation count (shapes below), which
    gives CPU-equivalent seconds on this machine; GPU seconds assume the stated
    sustained throughputs. Data-parallel ranks divide the forward and covariance
    work; eigh, rotation and weight I/O are repeated on every rank.
    """
    small = dict(d=SHAPE["hidden"], params=7 * SHAPE["hidden"] ** 2, layers=SHAPE["layers"],
                 tokens=samples * seqlen)  # q,k,v,o + gate,up,down at MLP == hidden
    big = dict(d=8192, params=2 * 8192 ** 2 + 2 * 8192 * 1024 + 3 * 8192 * 28672, layers=80,
               tokens=1024 * 2048)  # Llama-2-70B (GQA 8 kv heads), SliceGPT calibration 1024 x 2048
    per_block = {k: v / small["layers"] for k, v in measured.items() if isinstance(v, float)}
    flops = {  # operation counts per block
        "forward": lambda m: 2 * m["params"] * m["tokens"],
        "covariance": lambda m: 2 * 2 * m["tokens"] * m["d"] ** 2,  # two residual points per block
        "eigh": lambda m: 2 * 9 * m["d"] ** 3,  # two eigendecompositions, ~9 d^3 each
        "rotate": lambda m: 2 * m["params"] * m["d"],
        "weights io": lambda m: 2 * 2 * m["params"],  # read + write bytes in bf16 (fp32 here: x2 below)
    }
    cpu_s = {
        "forward": per_block["forward (rest of the layer pass)"],
        "covariance": per_block.get("covariance", 0.0),
        "eigh": per_block.get("eigh", 0.0),
        "rotate": per_block.get("rotate", 0.0),
        "weights io": per_block.get("read weights", 0.0) + per_block.get("write block", 0.0),
    }
    rate = {k: flops[k](small) * (2 if k == "weights io" else 1) / max(cpu_s[k], 1e-9) for k in flops}
    big_cpu = {k: flops[k](big) / rate[k] * big["layers"] for k in flops}
    gpu_rate = {"forward": 400e12, "covariance": 50e12, "eigh": 1.5e12, "rotate": 50e12, "weights io": 5e9}
    gpu = {}
    for n in (1, 8):
        per = {k: flops[k](big) / gpu_rate[k] / (n if k in ("forward", "covariance") else 1) for k in flops}
        gpu[f"{n} GPU"] = {"hours": sum(per.values()) * big["layers"] / 3600,
                           "seconds_per_block": per}
    layer_gb = big["params"] * 2 / 1e9
    boundary_gb = big["tokens"] * big["d"] * 2 / 1e9
    return {
        "assumptions": {
            "model": "Llama-2-70B: d 8192, MLP 28672, 80 blocks, 8 kv heads, bf16 weights",
            "calibration": "1024 x 2048 tokens (SliceGPT's setting)",
            "gpu_sustained_rates": {"forward bf16 FLOP/s": 400e12, "covariance fp64-accumulated FLOP/s": 50e12,
                                    "eigh fp64 FLOP/s (cuSOLVER syevd, 9 d^3)": 1.5e12,
                                    "rotation FLOP/s": 50e12, "weights read+write B/s (NVMe)": 5e9},
        },
        "cpu_rates_measured_here": rate,
        "cpu_hours_this_machine_1_thread": sum(big_cpu.values()) / 3600,
        "gpu": gpu,
        "memory_gb": {
            "one block of weights (bf16)": layer_gb,
            "one layer boundary of activations (bf16), whole calibration set": boundary_gb,
            "per rank with 8 ranks": boundary_gb / 8,
            "covariance + eigh workspace (fp64)": 4 * 8 * 8192 ** 2 / 1e9,
            "whole model (bf16)": big["params"] * big["layers"] * 2 / 1e9,
        },
    }


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
    ap.add_argument("--phases-only", action="store_true",
                    help="only (re)measure the phase breakdown and the 70B estimate into docs/offload.json")
    args = ap.parse_args()
    work = args.keep or Path(tempfile.mkdtemp(prefix="slimformer-offload-"))
    if args.phases_only:
        src = work / "dense"
        if not (src / "config.json").exists():
            build(src)
        doc = REPO / "docs" / "offload.json"
        out = json.loads(doc.read_text()) if doc.exists() else {}
        t = phases(src, work / "phases", args.samples, args.seqlen)
        out["phases_disk_offload_seconds"] = t
        out["estimate_llama2_70b"] = estimate_70b(t, args.samples, args.seqlen)
        doc.write_text(json.dumps(out, indent=2) + "\n")
        print(json.dumps({k: out[k] for k in ("phases_disk_offload_seconds", "estimate_llama2_70b")}, indent=1))
        return
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
    t = phases(src, work / "phases", args.samples, args.seqlen)
    out["phases_disk_offload_seconds"] = t
    out["estimate_llama2_70b"] = estimate_70b(t, args.samples, args.seqlen)
    (REPO / "docs" / "offload.json").write_text(json.dumps(out, indent=2) + "\n")
    for key, s in summary.items():
        print(f"{key:10s} compress {s['seconds_median']:7.1f}s  wall {s['wall_s_median']:7.1f}s  "
              f"peak RSS {s['peak_rss_mb_median']:7.0f} MB  growth {s['growth_mb_median']:7.0f} MB")
    print("max |dW| vs in-memory 1 process:", diffs)
    if args.keep is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
