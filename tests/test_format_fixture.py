"""Frozen saved models of every format version must keep loading with identical logits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import slimformer as sf

FIXTURES = sorted((Path(__file__).parent / "fixtures").glob("format_v*"))


@pytest.mark.parametrize("fixture", FIXTURES, ids=[f.name for f in FIXTURES])
def test_frozen_fixture_loads_with_identical_logits(fixture: Path) -> None:
    expected = json.loads((fixture / "expected.json").read_text())
    model, _ = sf.load_model(fixture)
    with torch.no_grad():
        logits = model(input_ids=torch.tensor(expected["input_ids"])).logits
    assert (logits - torch.tensor(expected["logits"])).abs().max().item() <= 1e-5


def test_there_is_a_fixture_for_the_current_format() -> None:
    from slimformer.core.plan import FORMAT_VERSION

    assert any(f.name == f"format_v{FORMAT_VERSION}" for f in FIXTURES)
