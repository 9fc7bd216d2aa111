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


@pytest.mark.parametrize("method", [
    ["--method", "slicegpt", "--target-params", "0.2", "--schedule", "layer-redundancy"],  # BI + covariances
    ["--method", "modegpt", "--target-params", "0.25"],  # BI (global allocation) + Grams
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


def test_without_a_process_group_nothing_is_sharded() -> None:
    assert current() == DistInfo(0, 1)
    ids = torch.arange(12).view(4, 3)
    assert torch.equal(shard(ids), ids)
