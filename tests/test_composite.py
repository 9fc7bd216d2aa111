"""``composite``: one budget split between residual slicing and head/MLP pruning, the split chosen on
held-out calibration windows; every candidate recorded; saved and reloaded like every method."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

import slimformer as sf
from slimformer.cli import main
from slimformer.methods._shared.selection import heldout_nll, split_calibration
from slimformer.methods.composite import CompositeConfig, parse_splits
from slimformer.methods.composite.apply import slice_target

from family_grid import build, ids, logits

TOL = 0.01


def _check_candidates(report: dict, target: float) -> list[dict]:
    """Every scored candidate is within TOL of the target; the chosen one has the lowest held-out NLL."""
    comp = report["composite"]
    scored = [r for r in comp["candidates"] if "heldout_nll" in r]
    assert scored
    for row in scored:
        assert abs(row["removed_fraction"] - target) <= TOL, row
        assert row["seconds"] >= 0 and math.isclose(row["heldout_ppl"], math.exp(row["heldout_nll"]))
    best = min(scored, key=lambda r: r["heldout_nll"])
    assert comp["chosen_split"] == best["split"]
    assert report["params_after"] == best["params_after"]
    assert abs(report["removed_fraction"] - target) <= TOL
    return scored


def test_config_validation_is_one_line() -> None:
    assert parse_splits("0, 0.25,1") == [0.0, 0.25, 1.0]
    assert CompositeConfig(target_params=0.3, splits="0.5,0").split_values() == [0.5, 0.0]
    assert CompositeConfig(target_params=0.3).touches() == frozenset({"residual", "heads", "mlp"})
    for kwargs, match in (({}, "needs target_params"), ({"target_params": 1.0}, "target_params must be in"),
                          ({"target_params": 0.0}, "target_params must be in"),
                          ({"target_params": -0.2}, "target_params must be in"),
                          ({"target_params": 0.3, "splits": "0,1.5"}, r"splits must be in \[0, 1\]"),
                          ({"target_params": 0.3, "splits": "-0.1"}, r"splits must be in \[0, 1\]"),
                          ({"target_params": 0.3, "splits": ""}, "at least one split"),
                          ({"target_params": 0.3, "splits": " , "}, "at least one split"),
                          ({"target_params": 0.3, "splits": "0,x"}, "numbers in"),
                          ({"target_params": 0.3, "splits": "0.5,0.5"}, "twice"),
                          ({"target_params": 0.3, "holdout": 1.0}, "holdout"),
                          ({"target_params": 0.3, "schedule": "nosuch"}, "unknown schedule"),
                          ({"target_params": 0.3, "prune_schedule": "nosuch"}, "unknown schedule"),
                          ({"target_params": 0.3, "attention": "rows"}, "attention must be"),
                          ({"target_params": 0.3, "keep_tied": "yes"}, "keep_tied must be")):
        with pytest.raises(ValueError, match=match) as info:
            CompositeConfig(**kwargs)
        assert "\n" not in str(info.value)


def test_budget_arithmetic() -> None:
    # 1000 params, 30% in all: FASP took 1000 -> 850, slicing must take 850 -> 700
    assert slice_target(1000, 850, 0.3) == pytest.approx(150 / 850)
    assert slice_target(1000, 690, 0.3) < 0  # pruning overshot: nothing left to slice


@pytest.mark.parametrize("family", ["llama", "opt"])
def test_every_candidate_on_target_best_chosen_and_reload_exact(family: str, tmp_path: Path) -> None:
    calib = ids(12, 24, seed=2)
    config = CompositeConfig(target_params=0.2, splits="0,0.5,1", holdout=0.25)
    result = sf.compress(build(family), config, calib, progress=False)
    scored = _check_candidates(result.report, 0.2)
    rows = result.report["composite"]["candidates"]
    assert [r["split"] for r in rows] == [0.0, 0.5, 1.0] and len(scored) == 3
    assert rows[0]["slicegpt_target"] == 0 and rows[2]["fasp_target"] == 0  # the pure end points
    assert 0 < rows[1]["fasp_target"] < 0.2 and rows[1]["slicegpt_target"] > 0
    assert result.report["composite"]["holdout_windows"] == 3
    # the returned model IS the chosen candidate: its held-out score is the recorded minimum
    _, held = split_calibration(calib, 0.25)
    best = min(scored, key=lambda r: r["heldout_nll"])
    assert heldout_nll(result.model, held, 8, torch.device("cpu")) == pytest.approx(best["heldout_nll"], rel=1e-6)
    saved = Path(result.save(tmp_path / "composite"))
    report = json.loads((saved / "slimformer_report.json").read_text())
    assert report["method"] == "composite" and len(report["composite"]["candidates"]) == 3
    x = ids()
    remote = AutoModelForCausalLM.from_pretrained(saved, trust_remote_code=True).eval()
    assert float((logits(remote, x) - logits(result.model, x)).abs().max()) <= 1e-5
    loaded, _ = sf.load_model(saved)
    assert float((logits(loaded, x) - logits(result.model, x)).abs().max()) <= 1e-5


def test_mixed_split_keeps_both_kinds_of_structure() -> None:
    """A mixed split prunes heads/MLP channels *and* slices the residual stream."""
    model = build("llama")
    d, inter = model.config.hidden_size, model.config.intermediate_size
    model_kv = model.config.num_key_value_heads
    result = sf.compress(model, CompositeConfig(target_params=0.3, splits="0.5", holdout=0.25), ids(12, 24, seed=2),
                         progress=False)
    assert result.report["composite"]["chosen_split"] == 0.5
    assert set(result.report) >= {"fasp", "slicegpt"}
    layers = result.report["layers"]
    assert any(row["d_in"] < d for row in layers)  # residual stream sliced
    assert any(row["mlp"] < inter or row.get("kv_heads", 0) < model_kv for row in layers)  # pruned


def test_refit_reruns_the_chosen_split_on_all_windows() -> None:
    calib = ids(12, 24, seed=2)
    config = CompositeConfig(target_params=0.2, splits="0,0.5", holdout=0.25, refit=True)
    result = sf.compress(build("llama"), config, calib, progress=False)
    comp = result.report["composite"]
    refit = comp["refit"]
    assert refit["windows"] == 12 and refit["split"] == comp["chosen_split"] and "error" not in refit
    assert abs(refit["removed_fraction"] - 0.2) <= TOL
    assert result.report["removed_fraction"] == pytest.approx(refit["removed_fraction"])


def test_failed_and_time_boxed_candidates_are_reported() -> None:
    boxed = sf.compress(build("llama"), CompositeConfig(target_params=0.2, splits="0,1", holdout=0.25,
                                                        max_minutes=1e-9), ids(12, 24, seed=2), progress=False)
    rows = boxed.report["composite"]["candidates"]
    assert "heldout_nll" in rows[0] and "time box" in rows[1]["skipped"]
    with pytest.raises(ValueError, match="at least 2 calibration windows"):
        sf.compress(build("llama"), CompositeConfig(target_params=0.2), ids(1, 24), progress=False)


def test_stories260k_composite_never_worse_than_its_end_points(stories_dir: Path, tinystories_train: Path) -> None:
    t0 = time.perf_counter()
    model, tok = sf.load_model(stories_dir)
    calib = sf.data.load(str(tinystories_train), tok, samples=16, seqlen=128, seed=0)
    result = sf.compress(model, CompositeConfig(target_params=0.3, splits="0,0.5,1", holdout=0.25), calib,
                         progress=False)
    scored = _check_candidates(result.report, 0.3)
    chosen = min(r["heldout_nll"] for r in scored)
    assert all(chosen <= r["heldout_nll"] for r in scored if r["split"] in (0.0, 1.0))
    assert time.perf_counter() - t0 < 60


def test_cli_composite_end_to_end(tmp_path: Path, stories_dir: Path, tinystories_train: Path,
                                  capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "composite"
    assert main(["compress", str(stories_dir), "--method", "composite", "--target-params", "0.2",
                 "--splits", "0.5,1", "--prune-schedule", "uniform", "--schedule", "layer-redundancy",
                 "--holdout", "0.25", "--calib", str(tinystories_train), "--calib-samples", "8",
                 "--calib-seqlen", "64", "--no-progress", "--out", str(out)]) == 0
    capsys.readouterr()
    saved = json.loads((out / "slimformer_report.json").read_text())
    assert saved["method"] == "composite" and saved["config"]["schedule"] == "layer-redundancy"
    assert [r["split"] for r in saved["composite"]["candidates"]] == [0.5, 1.0]
    assert abs(saved["removed_fraction"] - 0.2) <= TOL
    loaded, _ = sf.load_model(out)
    assert sf.count_params(loaded) == saved["params_after"]
    code = main(["compress", str(stories_dir), "--method", "composite", "--target-params", "0.2", "--splits", "2",
                 "--calib", str(tinystories_train), "--no-progress", "--out", str(tmp_path / "bad")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "splits must be in [0, 1]" in err
    assert not (tmp_path / "bad").exists()
