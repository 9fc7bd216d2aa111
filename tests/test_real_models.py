"""Quality on the real tiny models in ../shared/models (minutes, not seconds).

Reference numbers for stories260k were measured with the official SliceGPT code
on these settings on this machine (issue #3): dense 5.05, sparsity 0 -> 5.09
(its Llama embedding centring breaks exactness), 0.1 -> 8.23, 0.2 -> 20.5,
0.3 -> 53.9. slimformer must be exact at 0 and within 3% of (or better than)
the others.
"""

from __future__ import annotations

import pytest
import torch

import slimformer as sf
from slimformer.eval import perplexity

from conftest import shared_path

OFFICIAL = {0.1: 8.23, 0.2: 20.5, 0.3: 53.9}


@pytest.fixture(scope="module")
def stories():
    model_dir = shared_path("models", "stories260k")
    train = shared_path("data", "tinystories", "tinystories_train_prefix.txt")
    valid = shared_path("data", "tinystories", "tinystories_valid_prefix.txt")
    _, tok = sf.load_model(model_dir)
    calib = sf.data.load(str(train), tok, samples=128, seqlen=256, seed=42)
    valid_ids = sf.data.tokenize_text(sf.data.load_text(str(valid)).text, tok)
    return model_dir, tok, calib, valid_ids


def _ppl(model, tok, ids) -> float:
    return perplexity(model, tok, ids, seqlen=512, batch_size=16, progress=False).ppl


@pytest.fixture(scope="module")
def dense_ppl(stories) -> float:
    model_dir, tok, _, ids = stories
    model, _ = sf.load_model(model_dir)
    return _ppl(model, tok, ids)


def test_dense_matches_reference(dense_ppl: float) -> None:
    assert dense_ppl == pytest.approx(5.05, abs=0.02)


def test_sparsity_zero_is_exact_on_real_model(stories, dense_ppl: float) -> None:
    model_dir, tok, calib, ids = stories
    model, _ = sf.load_model(model_dir)
    probe = ids[:512].view(1, -1)
    with torch.no_grad():
        ref = model(input_ids=probe).logits
    sf.compress(model, sf.SliceGPTConfig(sparsity=0.0), calib, progress=False)
    with torch.no_grad():
        assert (model(input_ids=probe).logits - ref).abs().max().item() <= 1e-4
    assert _ppl(model, tok, ids) == pytest.approx(dense_ppl, rel=1e-5)


@pytest.mark.parametrize("sparsity", [pytest.param(s, marks=[] if s == 0.2 else [pytest.mark.heavy])
                                      for s in sorted(OFFICIAL)])
def test_slicegpt_quality_vs_official(stories, sparsity: float) -> None:
    model_dir, tok, calib, ids = stories
    model, _ = sf.load_model(model_dir)
    sf.compress(model, sf.SliceGPTConfig(sparsity=sparsity), calib, progress=False)
    ppl = _ppl(model, tok, ids)
    print(f"stories260k slicegpt {sparsity}: ppl {ppl:.3f} (official {OFFICIAL[sparsity]})")
    assert ppl <= OFFICIAL[sparsity] * 1.03


@pytest.mark.heavy
def test_opt_fixture_slicegpt_25(tmp_path) -> None:
    model_dir = shared_path("models", "opt-fixture")
    valid = shared_path("data", "wikitext2", "wiki.valid.raw")
    test = shared_path("data", "wikitext2", "wiki.test.raw")
    model, tok = sf.load_model(model_dir)
    test_ids = sf.data.tokenize_text(sf.data.load_text(str(test)).text, tok)[:40_000]
    dense = perplexity(model, tok, test_ids, seqlen=256, batch_size=16, progress=False).ppl
    calib = sf.data.load(str(valid), tok, samples=64, seqlen=256, seed=0)
    result = sf.compress(model, sf.SliceGPTConfig(sparsity=0.25), calib, progress=False)
    sliced = perplexity(model, tok, test_ids, seqlen=256, batch_size=16, progress=False).ppl
    print(f"opt-fixture dense {dense:.2f} -> slicegpt 25% {sliced:.2f}, removed {result.report['removed_fraction']:.3f}")
    assert result.plan.embed_width == 192
    assert dense < sliced < dense * 2.0
    out = result.save(tmp_path / "opt")
    loaded, _ = sf.load_model(out)
    with torch.no_grad():
        probe = test_ids[:256].view(1, -1)
        assert (loaded(input_ids=probe).logits - model(input_ids=probe).logits).abs().max().item() <= 1e-5
