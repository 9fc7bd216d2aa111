"""Deployable SliceGPT variants (issue #21, item 4): keep-tied heads and one shared basis.

* ``keep_tied``: a tied head stays tied to the rotated, sliced embedding; a head-input map
  ``M = Q0^T diag(g) QL`` (format 3 plan field ``head_proj``) runs after the final norm.
* ``basis="shared"``: one basis everywhere, converted into the base HF class with a smaller
  ``hidden_size``; it saves with a plain config.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch

import slimformer as sf
from slimformer.arch import get_adapter, get_module
from slimformer.core.params import ResidualWidths, compressed_param_count, count_params
from slimformer.runtime.modeling_slimformer import SlimBlock, SlimRMSNormProject

from conftest import shared_path
from tiny_models import VOCAB, make_model

TOL = 1e-4


def _calib(n: int = 8, t: int = 24, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, VOCAB, (n, t), generator=torch.Generator().manual_seed(seed))


def _probe() -> torch.Tensor:
    return torch.randint(0, VOCAB, (2, 19), generator=torch.Generator().manual_seed(123))


def _logits(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits


def _no_count_warning(caplog: pytest.LogCaptureFixture) -> None:
    assert not [r for r in caplog.records if "predicted" in r.getMessage()], "parameter prediction was wrong"


def _shared(**kw) -> sf.SliceGPTConfig:
    return sf.SliceGPTConfig(basis="shared", slice_head=True, **kw)


# ----- keep_tied ---------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["llama", "qwen2", "qwen3"])
def test_keep_tied_sparsity_zero_is_exact(family: str) -> None:
    model = make_model(family, tied=True)
    dense = _logits(model, _probe())
    result = sf.compress(model, sf.SliceGPTConfig(sparsity=0.0, keep_tied=True), _calib(), progress=False)
    assert (_logits(result.model, _probe()) - dense).abs().max().item() <= TOL
    adapter = get_adapter(model)
    assert get_module(model, adapter.head).weight is get_module(model, adapter.embed).weight
    assert result.plan.tied_head and result.plan.head_proj


def test_keep_tied_removes_parameters_and_counts_exactly(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="slimformer")
    before = count_params(make_model("llama", tied=True))
    default = sf.compress(make_model("llama", tied=True), sf.SliceGPTConfig(sparsity=0.25), _calib(), progress=False)
    model = make_model("llama", tied=True)
    result = sf.compress(model, sf.SliceGPTConfig(sparsity=0.25, keep_tied=True), _calib(), progress=False)
    after = result.report["params_after"]
    assert after < before and after < default.report["params_after"]
    d, k = 64, 48
    norm = get_module(model, get_adapter(model).final_norm)
    assert isinstance(norm, SlimRMSNormProject) and tuple(norm.proj.weight.shape) == (k, d)  # M: [d0, dL]
    # the default result minus its untied head [V, d], plus M [k, d] and the (shared) embedding
    assert after == default.report["params_after"] - VOCAB * d + k * d
    _no_count_warning(caplog)


def test_keep_tied_target_params_is_exact(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="slimformer")
    model = make_model("llama", tied=True)
    result = sf.compress(model, sf.SliceGPTConfig(target_params=0.2, keep_tied=True), _calib(), progress=False)
    assert result.report["target_params"]["achieved"] == pytest.approx(0.2, abs=0.01)
    _no_count_warning(caplog)


def test_keep_tied_prediction_matches_on_sliced_head(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="slimformer")
    model = make_model("qwen2", tied=True)
    cfg = sf.SliceGPTConfig(sparsity=0.3, keep_tied=True, slice_head=True)
    result = sf.compress(model, cfg, _calib(), progress=False)
    assert result.plan.head_width == result.plan.embed_width == 40
    _no_count_warning(caplog)


def test_keep_tied_save_load_round_trip(tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    model = make_model("llama", tied=True)
    result = sf.compress(model, sf.SliceGPTConfig(sparsity=0.25, keep_tied=True), _calib(), progress=False)
    ref = _logits(result.model, _probe())
    out = result.save(tmp_path / "kt")
    section = json.loads((Path(out) / "config.json").read_text())["slimformer"]
    assert section["format_version"] == 3 and section["plan"]["head_proj"] and section["plan"]["tied_head"]
    loaded, _ = sf.load_model(out)
    assert torch.equal(_logits(loaded, _probe()), ref)
    remote = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True).eval()
    assert torch.equal(_logits(remote, _probe()), ref)
    adapter = get_adapter(loaded)
    assert get_module(loaded, adapter.head).weight is get_module(loaded, adapter.embed).weight


def test_keep_tied_on_untied_model_is_a_noop(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="slimformer")
    a = sf.compress(make_model("llama"), sf.SliceGPTConfig(sparsity=0.25), _calib(), progress=False)
    b = sf.compress(make_model("llama"), sf.SliceGPTConfig(sparsity=0.25, keep_tied=True), _calib(), progress=False)
    assert b.report["keep_tied"] is False and b.report["params_after"] == a.report["params_after"]
    assert torch.equal(_logits(a.model, _probe()), _logits(b.model, _probe()))
    assert any("nothing to keep" in r.getMessage() for r in caplog.records)


def test_keep_tied_refuses_layernorm_models() -> None:
    with pytest.raises(ValueError, match="keep_tied supports RMSNorm families"):
        sf.compress(make_model("opt", tied=True), sf.SliceGPTConfig(sparsity=0.25, keep_tied=True), _calib(),
                    progress=False)


# ----- shared basis ------------------------------------------------------------------------


@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("family", ["llama", "qwen2", "qwen3", "mistral"])
def test_shared_basis_sparsity_zero_is_exact(family: str, tied: bool) -> None:
    model = make_model(family, tied)
    dense = _logits(model, _probe())
    result = sf.compress(model, _shared(sparsity=0.0), _calib(), progress=False)
    assert (_logits(result.model, _probe()) - dense).abs().max().item() <= TOL
    adapter = get_adapter(model)
    assert not any(isinstance(b, SlimBlock) for b in adapter.get_layers(model))
    assert result.report["plain_export"] is True


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_shared_basis_is_a_plain_model_with_exact_count(family: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="slimformer")
    model = make_model(family, tied=True)
    result = sf.compress(model, _shared(target_params=0.3), _calib(), progress=False)
    k = result.report["kept_width"]
    assert model.config.hidden_size == k and model.config.head_dim == 16
    assert get_module(model, get_adapter(model).embed).weight.shape == (VOCAB, k)
    assert result.report["target_params"]["achieved"] == pytest.approx(0.3, abs=0.01)
    assert not result.report["tied_head"]  # random final-norm weights: the head must be untied
    _no_count_warning(caplog)
    from slimformer.io.format import plain_config_changes

    assert plain_config_changes(model)  # a plain HF config describes it


def test_shared_basis_keeps_a_tie_with_constant_final_norm(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="slimformer")
    model = make_model("llama", tied=True)
    adapter = get_adapter(model)
    with torch.no_grad():
        get_module(model, adapter.final_norm).weight.fill_(1.3)
    dense = _logits(model, _probe())
    result = sf.compress(model, _shared(sparsity=0.0), _calib(), progress=False)
    assert result.report["tied_head"] and result.plan.tied_head
    assert get_module(model, adapter.head).weight is get_module(model, adapter.embed).weight
    assert (_logits(model, _probe()) - dense).abs().max().item() <= TOL
    _no_count_warning(caplog)
    fresh = make_model("llama", tied=True)
    with torch.no_grad():
        get_module(fresh, adapter.final_norm).weight.fill_(1.3)
    widths = ResidualWidths.uniform(64, 2, 64, False, True)
    assert compressed_param_count(fresh, get_adapter(fresh), widths, shared_basis=True) == count_params(model)


@pytest.mark.parametrize("kwargs, match", [
    (dict(basis="shared", sparsity=0.2), "slice_head=True"),
    (dict(basis="shared", sparsity=0.2, slice_head=True, schedule="layer-redundancy"), "schedule 'uniform'"),
    (dict(basis="shared", sparsity=0.2, slice_head=True, keep_tied=True), "drop keep_tied"),
    (dict(basis="global", sparsity=0.2), "basis must be one of"),
])
def test_shared_basis_bad_combinations(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match) as info:
        sf.SliceGPTConfig(**kwargs)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("family", ["opt", "phi"])
def test_shared_basis_refuses_layernorm_families(family: str) -> None:
    with pytest.raises(ValueError, match="use basis='per-layer'") as info:
        sf.compress(make_model(family), _shared(sparsity=0.25), _calib(), progress=False)
    assert "\n" not in str(info.value)


def test_shared_basis_saves_plain_when_asked(tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    model = make_model("qwen2", tied=True)
    result = sf.compress(model, _shared(sparsity=0.25), _calib(), progress=False)
    ref = _logits(model, _probe())
    out = Path(result.save(tmp_path / "sh", plain=True))
    assert not (out / "modeling_slimformer.py").exists()
    plain = AutoModelForCausalLM.from_pretrained(out).eval()  # no trust_remote_code
    assert type(plain).__name__ == "Qwen2ForCausalLM"
    assert (_logits(plain, _probe()) - ref).abs().max().item() <= 1e-5
    loaded, _ = sf.load_model(out)
    assert (_logits(loaded, _probe()) - ref).abs().max().item() <= 1e-5


def test_shared_basis_saves_plain_without_asking(tmp_path: Path) -> None:
    result = sf.compress(make_model("llama"), _shared(sparsity=0.25), _calib(), progress=False)
    out = Path(result.save(tmp_path / "auto"))
    assert json.loads((out / "config.json").read_text())["slimformer"]["plain"] is True


# ----- real model --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stories():
    model_dir = shared_path("models", "stories260k")
    train = shared_path("data", "tinystories", "tinystories_train_prefix.txt")
    valid = shared_path("data", "tinystories", "tinystories_valid_prefix.txt")
    _, tok = sf.load_model(model_dir)
    calib = sf.data.load(str(train), tok, samples=16, seqlen=128, seed=42)
    probe = sf.data.tokenize_text(sf.data.load_text(str(valid)).text, tok)[:256].view(1, -1)
    return model_dir, calib, probe


def test_stories_keep_tied(stories, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="slimformer")
    model_dir, calib, probe = stories
    model, _ = sf.load_model(model_dir)
    before = count_params(model)
    dense = _logits(model, probe)
    sf.compress(model, sf.SliceGPTConfig(sparsity=0.0, keep_tied=True), calib, progress=False)
    assert (_logits(model, probe) - dense).abs().max().item() <= TOL
    model, _ = sf.load_model(model_dir)
    result = sf.compress(model, sf.SliceGPTConfig(sparsity=0.25, keep_tied=True), calib, progress=False)
    assert result.report["params_after"] < before
    _no_count_warning(caplog)


def test_stories_shared_basis_saves_plain(stories, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    model_dir, calib, probe = stories
    model, _ = sf.load_model(model_dir)
    result = sf.compress(model, _shared(sparsity=0.25), calib, progress=False)
    ref = _logits(model, probe)
    out = Path(result.save(tmp_path / "stories_shared", plain=True))
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["slimformer"]["plain"] is True and cfg["hidden_size"] == 48 and cfg["head_dim"] == 8
    assert "auto_map" not in cfg
    plain = AutoModelForCausalLM.from_pretrained(out).eval()
    assert (_logits(plain, probe) - ref).abs().max().item() <= 1e-5
    assert count_params(plain) == result.report["params_after"]


# ----- offloaded compression -----------------------------------------------------------------


def test_offloaded_keep_tied_matches_in_memory(tmp_path: Path) -> None:
    make_model("llama", tied=True).save_pretrained(tmp_path / "src")
    cfg = sf.SliceGPTConfig(sparsity=0.25, keep_tied=True)
    ref = sf.compress(make_model("llama", tied=True), cfg, _calib(), progress=False)
    sf.compress_offloaded(tmp_path / "src", cfg, _calib(), tmp_path / "out", progress=False)
    loaded, _ = sf.load_model(tmp_path / "out")
    assert torch.equal(_logits(loaded, _probe()), _logits(ref.model, _probe()))


def test_offloaded_shared_basis_is_refused(tmp_path: Path) -> None:
    make_model("llama").save_pretrained(tmp_path / "src")
    with pytest.raises(ValueError, match="cannot run offloaded"):
        sf.compress_offloaded(tmp_path / "src", _shared(sparsity=0.25), _calib(), tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()
