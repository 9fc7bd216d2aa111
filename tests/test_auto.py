"""``auto``: candidates scored on held-out calibration windows; the model becomes the best one."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

import slimformer as sf
from slimformer.cli import main
from slimformer.methods.auto import parse_candidates
from slimformer.methods.auto.apply import heldout_nll, split_calibration

from tiny_models import VOCAB, make_model


def _calib(n: int = 12, t: int = 24) -> torch.Tensor:
    return torch.randint(0, VOCAB, (n, t), generator=torch.Generator().manual_seed(0))


def test_candidates_parse_and_bad_ones_are_refused() -> None:
    got = parse_candidates("fasp; fasp:attention=heads,schedule=global ;slicegpt:basis=shared,slice_head=true")
    assert [m for _, m, _ in got] == ["fasp", "fasp", "slicegpt"]
    assert got[2][2] == {"basis": "shared", "slice_head": True}
    for bad, match in (("", "at least one"), ("fasp:attention", "field=value"), ("fasp;fasp", "twice"),
                       ("fasp:sparsity=0.3", "budget")):
        with pytest.raises(ValueError, match=match):
            parse_candidates(bad)
    with pytest.raises(ValueError, match="target_params"):
        sf.AutoConfig()
    with pytest.raises(ValueError, match="holdout"):
        sf.AutoConfig(target_params=0.2, holdout=1.0)
    model = make_model("llama")
    for candidates, match in (("nosuch", "unknown method"), ("fasp:nosuch=1", "no field 'nosuch'")):
        with pytest.raises(ValueError, match=match):  # checked before any candidate runs
            sf.compress(model, sf.AutoConfig(target_params=0.2, candidates=candidates), _calib(), progress=False)


def test_auto_keeps_the_best_held_out_candidate_and_records_all(tmp_path: Path) -> None:
    calib = _calib()
    config = sf.AutoConfig(target_params=0.2, candidates="fasp;fasp:attention=heads;slicegpt", holdout=0.25)
    result = sf.compress(make_model("llama"), config, calib, progress=False)
    auto = result.report["auto"]
    rows = auto["candidates"]
    assert [r["label"] for r in rows] == ["fasp", "fasp:attention=heads", "slicegpt"]
    assert all(abs(r["removed_fraction"] - 0.2) < 0.02 for r in rows)
    best = min(rows, key=lambda r: r["heldout_ppl"])
    assert auto["chosen"] == best["label"] and auto["holdout_windows"] == 3 and auto["calibration_windows"] == 9
    _, held = split_calibration(calib, 0.25)
    # the returned model IS the chosen candidate: its held-out score is the recorded minimum
    assert math.exp(heldout_nll(result.model, held, 8, torch.device("cpu"))) == pytest.approx(best["heldout_ppl"],
                                                                                              rel=1e-6)
    assert result.report["params_after"] == best["params_after"]
    out = Path(result.save(tmp_path / "auto"))
    loaded, _ = sf.load_model(out)
    ids = calib[:2]
    with torch.no_grad():
        assert (loaded(ids).logits - result.model(ids).logits).abs().max().item() <= 1e-5


def test_failing_and_time_boxed_candidates_are_reported() -> None:
    # shared-basis SliceGPT needs an RMSNorm family: on OPT it fails and the others still compete
    config = sf.AutoConfig(target_params=0.2, candidates="slicegpt:basis=shared,slice_head=true;fasp")
    result = sf.compress(make_model("opt"), config, _calib(), progress=False)
    rows = result.report["auto"]["candidates"]
    assert "RMSNorm" in rows[0]["error"] and result.report["auto"]["chosen"] == "fasp"
    boxed = sf.compress(make_model("llama"), sf.AutoConfig(target_params=0.2, candidates="fasp;slicegpt",
                                                           max_minutes=1e-9), _calib(), progress=False)
    rows = boxed.report["auto"]["candidates"]
    assert "heldout_ppl" in rows[0] and "time box" in rows[1]["skipped"]
    model = make_model("llama")
    before = {n: p.clone() for n, p in model.state_dict().items()}
    with pytest.raises(ValueError, match="no candidate could compress") as info:  # every candidate fails
        sf.compress(model, sf.AutoConfig(target_params=0.97, candidates="slicegpt;fasp"), _calib(), progress=False)
    message = str(info.value)
    assert "\n" not in message and "slicegpt: target_params 0.97 is unreachable" in message and "; fasp: " in message
    assert all(torch.equal(before[n], p) for n, p in model.state_dict().items())  # the model is left as it was


def test_cli_auto_on_stories260k(tmp_path: Path, stories_dir: Path, tinystories_train: Path,
                                 capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "auto"
    assert main(["compress", str(stories_dir), "--method", "auto", "--target-params", "0.3",
                 "--candidates", "fasp;fasp:attention=heads", "--calib", str(tinystories_train),
                 "--calib-samples", "16", "--calib-seqlen", "128", "--no-progress", "--out", str(out)]) == 0
    capsys.readouterr()
    saved = json.loads((out / "slimformer_report.json").read_text())
    assert saved["method"] == "auto" and len(saved["auto"]["candidates"]) == 2
    assert saved["auto"]["chosen"] in ("fasp", "fasp:attention=heads")
