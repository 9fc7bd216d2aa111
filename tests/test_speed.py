"""Speed/memory measurement: structure and sanity of the numbers (timing targets live in benchmarks/)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

import slimformer as sf
from slimformer.eval.speed import SpeedSettings, compare_speed, matmul_params

from tiny_models import VOCAB, make_model


def test_compare_speed_dense_vs_sliced(tmp_path: Path) -> None:
    dense = make_model("llama")
    sliced = copy.deepcopy(dense)
    calib = torch.randint(0, VOCAB, (8, 24), generator=torch.Generator().manual_seed(0))
    sf.compress(sliced, sf.SliceGPTConfig(sparsity=0.5), calib, progress=False)
    res = compare_speed({"dense": dense, "sliced": sliced},
                        SpeedSettings(batch=2, seqlen=16, new_tokens=8, warmup=1, repeats=2, threads=1))
    for r in res["models"].values():
        for key in ("prefill_tokens_per_s", "decode_tokens_per_s", "decode_ms_per_token"):
            s = r[key]
            assert 0 < s["min"] <= s["median"] <= s["max"]
    # the FLOP speed-up is computed from the actual Linear shapes (shortcuts included), dense / compressed
    expected = res["speedup"]["matmul_flops"]
    assert expected == pytest.approx(matmul_params(dense) / matmul_params(sliced))
    assert expected > 1.0 and "matmul_flop_ratio" not in res["speedup"]
    json.dumps(res)  # JSON-serialisable


def test_bench_cli_and_bad_settings(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from slimformer.cli import main

    fixture = Path(__file__).parent / "fixtures" / "format_v1"
    out = tmp_path / "bench.json"
    assert main(["bench", str(fixture), "--seqlen", "8", "--new-tokens", "8", "--repeats", "1",
                 "--threads", "1", "--json", str(out)]) == 0
    assert "decode" in capsys.readouterr().out and json.loads(out.read_text())["models"]["model"]["params"] > 0
    assert main(["bench", str(fixture), "--seqlen", "100", "--new-tokens", "8"]) == 2
    assert "max_position_embeddings" in capsys.readouterr().err
    with pytest.raises(ValueError, match="repeats"):
        SpeedSettings(repeats=0)
    with pytest.raises(ValueError, match="new_tokens must be >= 8"):  # decode = generate - prefill: too noisy
        SpeedSettings(new_tokens=2)
