"""Families described by a Llama-style adapter (Ministral, Helium, SmolLM3, Seed-OSS, Hunyuan dense, Gemma):
fusion + rotation is exact, every method is exact at sparsity 0, and a compressed model reloads
through the saved runtime file (``trust_remote_code``) and through slimformer."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import transformers
from transformers import AutoModelForCausalLM

import slimformer as sf
from slimformer.arch import get_adapter
from slimformer.core.fuse import fuse
from slimformer.core.rotate import random_orthogonal, rotate_model

VOCAB = 128
TOL = 1e-4
CONFIGS = {
    "ministral": "MinistralConfig",
    "helium": "HeliumConfig",
    "smollm3": "SmolLM3Config",
    "seed_oss": "SeedOssConfig",
    "hunyuan_v1_dense": "HunYuanDenseV1Config",
    "gemma": "GemmaConfig",  # (1 + w) RMSNorm, sqrt(d) embedding scale, GeGLU
}


def _model(family: str, seed: int = 0) -> torch.nn.Module:
    cfg = getattr(transformers, CONFIGS[family])(
        vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, intermediate_size=96, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, max_position_embeddings=128, tie_word_embeddings=False,
        pad_token_id=None, bos_token_id=None, eos_token_id=None)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).eval()
    with torch.no_grad():  # non-trivial norms and biases: a wrong fusion cannot pass
        for name, p in model.named_parameters():
            if "norm" in name or "layernorm" in name:
                p.copy_(1.0 + 0.3 * torch.randn_like(p))
            elif name.endswith("bias"):
                p.copy_(0.05 * torch.randn_like(p))
    return model


def _ids(n: int = 2, t: int = 17, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, VOCAB, (n, t), generator=torch.Generator().manual_seed(seed))


def _logits(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits


@pytest.mark.parametrize("family", CONFIGS)
def test_fuse_and_random_rotation_is_exact(family: str) -> None:
    model = _model(family)
    ids = _ids()
    dense = _logits(model, ids)
    adapter = get_adapter(model)
    fuse(model, adapter)
    d, n = model.config.hidden_size, model.config.num_hidden_layers
    bases = [(random_orthogonal(d, 2 * i + 1, torch.float32), random_orthogonal(d, 2 * i + 2, torch.float32))
             for i in range(n)]
    rotate_model(model, adapter, random_orthogonal(d, 0, torch.float32), bases)
    assert (_logits(model, ids) - dense).abs().max().item() <= TOL


def _methods(family: str) -> dict[str, object]:
    out = {
        "slicegpt": sf.SliceGPTConfig(sparsity=0.0),
        "fasp-channels": sf.FASPConfig(sparsity=0.0),
        "fasp-heads": sf.FASPConfig(sparsity=0.0, attention="heads"),
        "wanda-sp": sf.WandaSPConfig(sparsity=0.0),
        "dotresize": sf.DOTResizeConfig(sparsity=0.0),
        "modegpt": sf.MoDeGPTConfig(sparsity=0.0),
    }
    if get_adapter(_model(family)).head_norms:  # q/k head dims cannot be cut under per-head q/k norms
        out["modegpt"] = sf.MoDeGPTConfig(sparsity=0.0, modules="mlp,vo")
    return out


@pytest.mark.parametrize("family", CONFIGS)
def test_every_method_is_exact_at_sparsity_zero(family: str) -> None:
    ids, calib = _ids(), _ids(8, 24, seed=2)
    dense = _logits(_model(family), ids)
    for name, config in _methods(family).items():
        model = _model(family)
        sf.compress(model, config, calib, progress=False)
        assert (_logits(model, ids) - dense).abs().max().item() <= TOL, name


@pytest.mark.parametrize("family", CONFIGS)
def test_compressed_model_reloads_with_remote_code(family: str, tmp_path: Path) -> None:
    ids, calib = _ids(), _ids(8, 24, seed=2)
    for name, config in (("slicegpt", sf.SliceGPTConfig(sparsity=0.25)),
                         ("fasp", sf.FASPConfig(sparsity=0.3, schedule="global", attention="heads"))):
        result = sf.compress(_model(family), config, calib, progress=False)
        out = Path(result.save(tmp_path / name))
        remote = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True).eval()
        loaded, _ = sf.load_model(out)
        expected = _logits(result.model, ids)
        assert (_logits(remote, ids) - expected).abs().max().item() <= 1e-5
        assert (_logits(loaded, ids) - expected).abs().max().item() <= 1e-5


def test_gemma_offset_norms_with_tied_head_variants(tmp_path: Path) -> None:
    """Gemma's (1 + w) norms through the variants that read the final norm's scale directly."""
    def tied() -> torch.nn.Module:
        model = _model("gemma")
        model.config.tie_word_embeddings = True
        model.tie_weights()
        return model

    ids, calib = _ids(), _ids(8, 24, seed=2)
    dense = _logits(tied(), ids)
    for config in (sf.SliceGPTConfig(sparsity=0.0, keep_tied=True),
                   sf.SliceGPTConfig(sparsity=0.0, basis="shared", slice_head=True)):
        model = tied()
        sf.compress(model, config, calib, progress=False)
        assert (_logits(model, ids) - dense).abs().max().item() <= TOL, config
    result = sf.compress(tied(), sf.SliceGPTConfig(sparsity=0.25, basis="shared", slice_head=True), calib,
                         progress=False)
    out = Path(result.save(tmp_path / "shared"))
    plain = AutoModelForCausalLM.from_pretrained(out).eval()  # a plain Gemma of hidden size 48
    assert plain.config.hidden_size == 48
    assert (_logits(plain, ids) - _logits(result.model, ids)).abs().max().item() <= 1e-5
