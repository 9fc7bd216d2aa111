"""Frozen saved models of every format version must keep loading with identical logits.

``tests/fixtures/format_v1/`` is one saved model (SliceGPT); ``tests/fixtures/format_v2/<feature>/``
holds one per plan feature of format 2 (``scripts/make_format_fixtures_v2.py``). They are
never regenerated (tests/fixtures/README.md).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import slimformer as sf

ROOT = Path(__file__).parent / "fixtures"
FIXTURES = sorted(p.parent for p in ROOT.glob("format_v*/**/config.json"))
IDS = [str(f.relative_to(ROOT)) for f in FIXTURES]
MAX_ABS_DIFF = 1e-5


def _version_dir(fixture: Path) -> str:
    return fixture.relative_to(ROOT).parts[0]


def _check_logits(model: torch.nn.Module, fixture: Path) -> None:
    expected = json.loads((fixture / "expected.json").read_text())
    with torch.no_grad():
        logits = model(input_ids=torch.tensor(expected["input_ids"])).logits
    assert (logits - torch.tensor(expected["logits"])).abs().max().item() <= MAX_ABS_DIFF


@pytest.mark.parametrize("fixture", FIXTURES, ids=IDS)
def test_frozen_fixture_loads_with_identical_logits(fixture: Path) -> None:
    model, _ = sf.load_model(fixture)
    _check_logits(model, fixture)


@pytest.mark.parametrize("fixture", FIXTURES, ids=IDS)
def test_frozen_fixture_loads_with_remote_code(fixture: Path) -> None:
    """Plain transformers with the modeling file saved next to the fixture (frozen with it)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(fixture), trust_remote_code=True).eval()
    _check_logits(model, fixture)


@pytest.mark.parametrize("fixture", FIXTURES, ids=IDS)
def test_frozen_fixture_verifies(fixture: Path, capsys: pytest.CaptureFixture) -> None:
    from slimformer.cli import main

    assert main(["verify", str(fixture)]) == 0
    version = json.loads((fixture / "config.json").read_text())["slimformer"]["format_version"]
    assert f"slimformer format {version}," in capsys.readouterr().out
    assert _version_dir(fixture) == f"format_v{version}"  # each fixture sits in its version's directory


def test_there_is_a_fixture_for_the_current_format() -> None:
    from slimformer.core.plan import FORMAT_VERSION
    from slimformer.runtime.plan_schema import SUPPORTED_FORMAT_VERSIONS

    assert FORMAT_VERSION == max(SUPPORTED_FORMAT_VERSIONS)
    for version in SUPPORTED_FORMAT_VERSIONS:
        assert any(_version_dir(f) == f"format_v{version}" for f in FIXTURES), f"no fixture for format {version}"


def test_format_v2_fixtures_cover_every_plan_feature() -> None:
    """Between them the format-2 fixtures exercise each optional field format 2 names."""
    sections = [json.loads((f / "config.json").read_text())["slimformer"] for f in FIXTURES
                if _version_dir(f) == "format_v2"]
    plans = [s["plan"] for s in sections]
    blocks = [b for p in plans for b in p["blocks"]]
    assert all("weights_sha256" in s for s in sections)
    assert any(p["fused"] for p in plans) and any(not p["fused"] for p in plans)
    assert any(p["tied_head"] for p in plans)
    assert any(b["n_heads"] is not None and b["n_heads"] < 4 for b in blocks)  # whole heads pruned
    assert any(b["v_head_dim"] is not None and b["v_head_dim"] < b["head_dim"] for b in blocks)  # value channels
    assert any(b["qk_index"] is not None for b in blocks)  # MoDeGPT q/k
    for name in ("attn_in_index", "attn_out_index", "mlp_in_index", "mlp_out_index"):  # DISP channel sets
        assert any(b.get(name) is not None for b in blocks), name
