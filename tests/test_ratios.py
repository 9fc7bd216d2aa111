"""The ratio definitions of benchmarks/ratios.py (docs/ratios.md) on a tiny random Llama."""

from __future__ import annotations

import copy
import importlib.util
import sys
from pathlib import Path

import pytest
import torch

import slimformer as sf

from tiny_models import make_model

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
if str(BENCHMARKS) not in sys.path:  # the script imports benchmarks/common.py, as when run from there
    sys.path.insert(0, str(BENCHMARKS))
_SPEC = importlib.util.spec_from_file_location("bench_ratios", BENCHMARKS / "ratios.py")
ratios = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(ratios)


@pytest.fixture(scope="module")
def base() -> torch.nn.Module:
    torch.set_num_threads(1)
    return make_model("llama")  # d 64, 2 layers, MLP 96, 4 q / 2 kv heads of 16, untied head


@pytest.fixture(scope="module")
def calib() -> torch.Tensor:
    return torch.randint(0, 128, (8, 32), generator=torch.Generator().manual_seed(0))


def test_param_groups(base: torch.nn.Module) -> None:
    d, i, layers, vocab = 64, 96, 2, 128
    attn = d * d + 2 * (2 * 16) * d + d * d  # q, k, v (2 kv heads), o; no biases
    ffn = 3 * d * i
    counts = ratios.param_counts(base)
    assert counts["ffn"] == layers * ffn
    assert counts["block"] == layers * (attn + ffn)  # norms excluded
    assert counts["all"] == sum(p.numel() for p in base.parameters())
    assert counts["all"] == counts["block"] + layers * 2 * d + d + 2 * vocab * d  # + norms, final norm, embed, head


def test_slicegpt_uniform_width_ratio_is_the_sparsity(base: torch.nn.Module, calib: torch.Tensor) -> None:
    before = ratios.param_counts(base)
    result = sf.compress(copy.deepcopy(base), sf.SliceGPTConfig(sparsity=0.25), calib, progress=False)
    r = ratios.ratios(before, result.model, result.report["layers"], 64)
    assert r["width"] == 0.25  # every block reads 48 of 64 dims: SliceGPT's "25% slicing" exactly
    assert r["all"] == pytest.approx(result.report["removed_fraction"])
    assert r["all"] < 0.25  # far fewer parameters go than the slicing says


@pytest.mark.parametrize("s", [0.25, 0.5])
def test_fasp_mlp_only_block_ratio(base: torch.nn.Module, calib: torch.Tensor, s: float) -> None:
    before = ratios.param_counts(base)
    result = sf.compress(copy.deepcopy(base), sf.FASPConfig(sparsity=s, attention="none"), calib, progress=False)
    r = ratios.ratios(before, result.model, result.report["layers"], 64)
    assert [row["mlp"] for row in result.report["layers"]] == [int(96 * (1 - s))] * 2
    assert r["ffn"] == pytest.approx(s, abs=1e-12)  # s * 96 channels is whole: the FFN ratio is s exactly
    assert r["block"] == pytest.approx(s * before["ffn"] / before["block"], abs=1e-12)
    assert r["width"] == 0.0
    assert r["all"] == pytest.approx(result.report["removed_fraction"])
