"""Data-parallel calibration under torchrun (gloo, 2 CPU ranks) equals a single-process run."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import slimformer as sf
from slimformer.calib.dist import DistInfo, current, shard

COMMON = ["--calib-samples", "16", "--calib-seqlen", "128", "--seed", "3", "--no-progress"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _compress(args: list[str], ranks: int) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if ranks == 1:
        cmd = [sys.executable, "-m", "slimformer.cli", *args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(ranks),
               "--master-addr", "127.0.0.1", "--master-port", str(_free_port()), "-m", "slimformer.cli", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)


def _max_relative_weight_diff(a: Path, b: Path) -> float:
    """max over tensors of max|A - B| / max|A| between two saved directories (same keys)."""
    from safetensors.torch import load_file

    wa = {k: v for f in sorted(a.glob("*.safetensors")) for k, v in load_file(f).items()}
    wb = {k: v for f in sorted(b.glob("*.safetensors")) for k, v in load_file(f).items()}
    assert wa.keys() == wb.keys()
    return max(float((wa[k].double() - wb[k].double()).abs().max() / wa[k].double().abs().max().clamp_min(1e-30))
               for k in wa if wa[k].numel())


@pytest.mark.parametrize("method", [
    ["--method", "slicegpt", "--target-params", "0.2", "--schedule", "layer-redundancy"],  # BI + covariances
    # (the Gram-based methods share one all-reduce path: in the `heavy` run, to keep `make test` near 15 minutes)
    pytest.param(["--method", "modegpt", "--target-params", "0.25"], marks=pytest.mark.heavy),  # BI + Grams
    pytest.param(["--method", "fasp", "--sparsity", "0.3"], marks=pytest.mark.heavy),  # Grams + restoration
    ["--method", "slicegpt", "--sparsity", "0.25", "--offload", "disk"],  # data-parallel and offloaded at once
])
def test_two_ranks_equal_one(method: list[str], tmp_path: Path, stories_dir: Path, tinystories_train: Path) -> None:
    outs = {}
    for ranks in (1, 2):
        out = tmp_path / f"r{ranks}"
        res = _compress(["compress", str(stories_dir), *method, "--calib", str(tinystories_train), *COMMON,
                         "--out", str(out)], ranks)
        assert res.returncode == 0, res.stderr[-2000:]
        outs[ranks] = out
    rep = {r: json.loads((o / "slimformer_report.json").read_text()) for r, o in outs.items()}
    assert rep[1]["world_size"] == 1 and rep[2]["world_size"] == 2
    assert rep[1]["params_after"] == rep[2]["params_after"]
    assert rep[1]["calibration"]["sha256"] == rep[2]["calibration"]["sha256"]  # the whole data set is recorded
    if "scores" in rep[1]:
        assert rep[1]["scores"]["bi"] == pytest.approx(rep[2]["scores"]["bi"], rel=1e-9)
    ids = torch.randint(0, 512, (2, 64), generator=torch.Generator().manual_seed(0))
    logits = {}
    for r, o in outs.items():
        model, _ = sf.load_model(str(o))
        with torch.no_grad():
            logits[r] = model(ids).logits
    # identical up to floating-point reduction order (fp64 sums over the two shards)
    assert (logits[1] - logits[2]).abs().max() <= 1e-4
    assert _max_relative_weight_diff(outs[1], outs[2]) <= 1e-6


def test_without_a_process_group_nothing_is_sharded() -> None:
    assert current() == DistInfo(0, 1)
    ids = torch.arange(12).view(4, 3)
    assert torch.equal(shard(ids), ids)


FAILING_RANK = r"""
import os, sys
from slimformer.cli import main
args = sys.argv[1:]
if os.environ["RANK"] == "1":  # this rank fails before its first collective; rank 0 would wait forever
    args = [a if not a.endswith(".txt") else a + ".missing" for a in args]
sys.exit(main(args))
"""


def test_a_failing_rank_stops_every_rank(tmp_path: Path, stories_dir: Path, tinystories_train: Path) -> None:
    import time

    script = tmp_path / "failing_rank.py"
    script.write_text(FAILING_RANK)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
           "--master-port", str(_free_port()), str(script), "compress", str(stories_dir), "--method", "slicegpt",
           "--sparsity", "0.2", "--calib", str(tinystories_train), *COMMON, "--out", str(tmp_path / "out")]
    t0 = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode != 0
    assert time.perf_counter() - t0 < 240  # torchrun tore rank 0 down; it did not wait for a collective timeout
    assert "slimformer: error (rank 1 of 2)" in res.stderr and ".missing" in res.stderr, res.stderr[-2000:]
    assert not (tmp_path / "out").exists()
