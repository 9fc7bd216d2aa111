"""SliceGPT on tiny random models of every family: exactness, shapes, accounting, one forward."""

from __future__ import annotations

import pytest
import torch

import slimformer as sf
from slimformer.arch import get_adapter, get_module
from slimformer.runtime.modeling_slimformer import SlimBlock

from tiny_models import FAMILIES, VOCAB, make_model

TOL = 1e-4


def _calib(n: int = 8, t: int = 24, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, VOCAB, (n, t), generator=torch.Generator().manual_seed(seed))


def _probe() -> torch.Tensor:
    return torch.randint(0, VOCAB, (2, 19), generator=torch.Generator().manual_seed(123))


@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("family", FAMILIES)
def test_sparsity_zero_is_exact(family: str, tied: bool) -> None:
    model = make_model(family, tied)
    with torch.no_grad():
        dense = model(input_ids=_probe()).logits
    result = sf.compress(model, sf.SliceGPTConfig(sparsity=0.0), _calib(), batch_size=3, progress=False)
    with torch.no_grad():
        out = result.model(input_ids=_probe()).logits
    assert (out - dense).abs().max().item() <= TOL
    # PCA really rotated the stream: embedding is no longer the original one
    assert result.report["layers"][0]["d_in"] == model.config.hidden_size


@pytest.mark.parametrize("family", FAMILIES)
def test_sliced_shapes_match_plan_and_accounting(family: str) -> None:
    model = make_model(family)
    before = sum(p.numel() for p in model.parameters())
    result = sf.compress(model, sf.SliceGPTConfig(sparsity=0.3), _calib(), batch_size=4, progress=False)
    adapter = get_adapter(model)
    d = model.config.hidden_size
    k = sf.SliceGPTConfig(sparsity=0.3).kept_width(d)
    assert k == 40
    plan = result.plan
    assert plan.embed_width == k and plan.head_width == d
    for i, (bp, block) in enumerate(zip(plan.blocks, adapter.get_layers(model))):
        assert isinstance(block, SlimBlock)
        assert bp.d_in == k
        assert bp.d_out == (d if i == len(plan.blocks) - 1 else k)
        assert get_module(block, adapter.q).weight.shape[1] == bp.d_in
        assert get_module(block, adapter.down).weight.shape[0] == bp.d_out
        if not adapter.parallel:
            assert bp.d_mid == k
            assert get_module(block, adapter.o).weight.shape[0] == bp.d_mid
            assert block.mlp_shortcut.weight.shape == (bp.d_out, bp.d_mid)
    after = sum(p.numel() for p in model.parameters())
    assert result.report["params_before"] == before
    assert result.report["params_after"] == after
    assert result.report["removed_fraction"] == pytest.approx(1 - after / before)
    with torch.no_grad():
        logits = model(input_ids=_probe()).logits
    assert logits.shape == (2, 19, VOCAB) and torch.isfinite(logits).all()


@pytest.mark.parametrize("family", ["llama", "opt", "phi"])
def test_each_sublayer_runs_once_per_batch(family: str) -> None:
    model = make_model(family)
    adapter = get_adapter(model)
    calls: dict[str, int] = {}

    def counter(name: str):
        def hook(*_):
            calls[name] = calls.get(name, 0) + 1
        return hook

    for i, layer in enumerate(adapter.get_layers(model)):
        get_module(layer, adapter.attn).register_forward_hook(counter(f"attn{i}"))
        get_module(layer, adapter.down).register_forward_hook(counter(f"mlp{i}"))
    n_batches = 3
    sf.compress(model, sf.SliceGPTConfig(sparsity=0.25), _calib(n=9), batch_size=3, progress=False)
    assert calls == {f"{kind}{i}": n_batches for i in range(2) for kind in ("attn", "mlp")}


def test_offload_activations_gives_same_model() -> None:
    a, b = make_model("llama"), make_model("llama")
    sf.compress(a, sf.SliceGPTConfig(sparsity=0.25), _calib(), progress=False)
    sf.compress(b, sf.SliceGPTConfig(sparsity=0.25), _calib(), progress=False, offload_activations=True)
    with torch.no_grad():
        assert torch.allclose(a(input_ids=_probe()).logits, b(input_ids=_probe()).logits, atol=1e-5)


def test_slice_head_slices_last_output() -> None:
    model = make_model("llama")
    result = sf.compress(model, sf.SliceGPTConfig(sparsity=0.25, slice_head=True), _calib(), progress=False)
    assert result.plan.head_width == 48 and result.plan.blocks[-1].d_out == 48


def test_generate_with_kv_cache_matches_stepwise_argmax() -> None:
    model = make_model("llama")
    sf.compress(model, sf.SliceGPTConfig(sparsity=0.25), _calib(), progress=False)
    prompt = _probe()[:1, :6]
    out = model.generate(prompt, max_new_tokens=8, do_sample=False, pad_token_id=0)
    ids = prompt
    with torch.no_grad():
        for _ in range(8):
            nxt = model(input_ids=ids, use_cache=False).logits[:, -1].argmax(-1, keepdim=True)
            ids = torch.cat([ids, nxt], dim=1)
    assert torch.equal(out, ids)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(sparsity=1.0), "sparsity"),
        (dict(sparsity=-0.1), "sparsity"),
        (dict(sparsity=0.2, round_to=0), "round_to"),
        (dict(sparsity=0.2, damping=-1), "damping"),
    ],
)
def test_config_validation(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        sf.SliceGPTConfig(**kwargs)


def test_unknown_architecture_lists_supported() -> None:
    from transformers import BloomConfig, BloomForCausalLM

    model = BloomForCausalLM(BloomConfig(n_layer=1, hidden_size=32, n_head=2, vocab_size=64))
    with pytest.raises(sf.UnsupportedModelError, match="model_type='bloom'; supported: .*llama.*opt.*phi"):
        sf.compress(model, sf.SliceGPTConfig(sparsity=0.1), _calib())


def test_opt_post_ln_is_refused() -> None:
    from transformers import OPTConfig, OPTForCausalLM

    cfg = OPTConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1, ffn_dim=64, num_attention_heads=2,
                    do_layer_norm_before=False, word_embed_proj_dim=16)
    with pytest.raises(sf.UnsupportedModelError, match="post-LN"):
        sf.compress(OPTForCausalLM(cfg), sf.SliceGPTConfig(sparsity=0.1), _calib())
