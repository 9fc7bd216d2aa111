"""Real trained weights through other families' adapters: stories260k (Llama) rewritten exactly as a
Gemma model ((1 + w) RMSNorm, embeddings scaled by sqrt(hidden) in the forward), as a Granite
model (residual multiplier, embedding multiplier, logits scaling) and as a Phi-3 model (fused
``qkv_proj`` and ``gate_up_proj``); opt-fixture (OPT) rewritten exactly as GPT-2 (``Conv1D``
weights stored ``[in, out]``, fused ``c_attn``, positions without OPT's offset of 2). The rewritten models compute the
same function, so a method must give the same compressed model on them: the same perplexity on
the real evaluation text. A wrong adapter (a norm offset not folded, a multiplier dropped) fails
here with real activation statistics, not only on random weights."""

from __future__ import annotations

import pytest
import torch
import transformers
from transformers import AutoModelForCausalLM

import slimformer as sf
from slimformer.eval import perplexity

from conftest import shared_path

RES, EMB, LOGIT = 0.5, 4.0, 2.0  # Granite's scalars (powers of two: the rewrite is exact in fp32)


@pytest.fixture(scope="module")
def stories():
    model_dir = shared_path("models", "stories260k")
    train = shared_path("data", "tinystories", "tinystories_train_prefix.txt")
    valid = shared_path("data", "tinystories", "tinystories_valid_prefix.txt")
    llama, tok = sf.load_model(model_dir)
    calib = sf.data.load(str(train), tok, samples=32, seqlen=256, seed=42)
    valid_ids = sf.data.tokenize_text(sf.data.load_text(str(valid)).text, tok)[:8192]
    return llama, tok, calib, valid_ids


def _config(llama: torch.nn.Module, name: str, **extra) -> transformers.PretrainedConfig:
    c = llama.config
    return getattr(transformers, name)(
        vocab_size=c.vocab_size, hidden_size=c.hidden_size, intermediate_size=c.intermediate_size,
        num_hidden_layers=c.num_hidden_layers, num_attention_heads=c.num_attention_heads,
        num_key_value_heads=c.num_key_value_heads, head_dim=c.head_dim, max_position_embeddings=c.max_position_embeddings,
        rms_norm_eps=c.rms_norm_eps, rope_parameters=dict(c.rope_parameters), tie_word_embeddings=False,
        bos_token_id=c.bos_token_id, eos_token_id=c.eos_token_id, pad_token_id=None, **extra)


def as_gemma(llama: torch.nn.Module) -> torch.nn.Module:
    """Gemma scales embeddings by sqrt(64) = 8 and norms by (1 + w): store E / 8 and w - 1."""
    model = AutoModelForCausalLM.from_config(_config(llama, "GemmaConfig", hidden_act="silu"),
                                             dtype=torch.float32).eval()
    state = {k: v.clone() for k, v in llama.state_dict().items()}
    for k in state:
        if k.endswith("norm.weight") or "layernorm" in k:
            state[k] = state[k] - 1.0
    state["lm_head.weight"] = llama.lm_head.weight.detach().clone()
    state["model.embed_tokens.weight"] = state["model.embed_tokens.weight"] / 8.0
    model.load_state_dict(state, strict=True)
    return model


def as_granite(llama: torch.nn.Module) -> torch.nn.Module:
    """Granite multiplies embeddings by EMB, sublayer outputs by RES and divides logits by LOGIT;
    attention scores use ``attention_multiplier`` (set to Llama's 1/sqrt(head_dim))."""
    c = llama.config
    model = AutoModelForCausalLM.from_config(
        _config(llama, "GraniteConfig", residual_multiplier=RES, embedding_multiplier=EMB, logits_scaling=LOGIT,
                attention_multiplier=c.head_dim ** -0.5), dtype=torch.float32).eval()
    state = {k: v.clone() for k, v in llama.state_dict().items()}
    state["lm_head.weight"] = llama.lm_head.weight.detach().clone() * LOGIT
    state["model.embed_tokens.weight"] = state["model.embed_tokens.weight"] / EMB
    for k in state:
        if k.endswith("o_proj.weight") or k.endswith("down_proj.weight"):
            state[k] = state[k] / RES
    model.load_state_dict(state, strict=True)
    return model


def as_phi3(llama: torch.nn.Module) -> torch.nn.Module:
    """Phi-3 fuses q/k/v rows into ``qkv_proj`` and gate/up rows into ``gate_up_proj``."""
    model = AutoModelForCausalLM.from_config(_config(llama, "Phi3Config"), dtype=torch.float32).eval()
    state = {k: v.clone() for k, v in llama.state_dict().items()}
    state["lm_head.weight"] = llama.lm_head.weight.detach().clone()
    for i in range(llama.config.num_hidden_layers):
        a, m = f"model.layers.{i}.self_attn.", f"model.layers.{i}.mlp."
        state[a + "qkv_proj.weight"] = torch.cat([state.pop(a + f"{x}_proj.weight") for x in "qkv"])
        state[m + "gate_up_proj.weight"] = torch.cat([state.pop(m + f"{x}_proj.weight") for x in ("gate", "up")])
    model.load_state_dict(state, strict=True)
    return model


CONVERSIONS = {"gemma": as_gemma, "granite": as_granite, "phi3": as_phi3}


def _ppl(model, tok, ids) -> float:
    return perplexity(model, tok, ids, seqlen=256, batch_size=8, progress=False).ppl


@pytest.mark.parametrize("family", sorted(CONVERSIONS))
def test_rewritten_stories260k_compresses_like_the_original(stories, family: str) -> None:
    llama, tok, calib, ids = stories
    probe = ids[:256].view(1, -1)
    other = CONVERSIONS[family](llama)
    assert other.config.model_type == family
    with torch.no_grad():
        ref = llama(input_ids=probe).logits
        assert (other(input_ids=probe).logits - ref).abs().max().item() <= 1e-4  # the rewrite is exact
    # widths, not parameter targets: the original is tied, the rewrites are not (different counts)
    for config in (sf.SliceGPTConfig(sparsity=0.2), sf.FASPConfig(sparsity=0.2, attention="heads")):
        a, _ = sf.load_model(shared_path("models", "stories260k"))
        b = CONVERSIONS[family](a)
        sf.compress(a, config, calib, progress=False)
        sf.compress(b, config, calib, progress=False)
        ppl_a, ppl_b = _ppl(a, tok, ids), _ppl(b, tok, ids)
        assert ppl_b == pytest.approx(ppl_a, rel=2e-3), (family, config, ppl_a, ppl_b)
        assert ppl_a > 4.0  # compressed: above the dense model's perplexity on this slice


def as_gpt2(opt: torch.nn.Module) -> torch.nn.Module:
    """GPT-2 holds OPT's pre-LN block with Conv1D weights ``[in, out]`` and one fused ``c_attn``."""
    c = opt.config
    cfg = transformers.GPT2Config(
        vocab_size=c.vocab_size, n_embd=c.hidden_size, n_layer=c.num_hidden_layers, n_head=c.num_attention_heads,
        n_inner=c.ffn_dim, n_positions=c.max_position_embeddings, activation_function="relu",
        layer_norm_epsilon=1e-5, tie_word_embeddings=True, bos_token_id=c.bos_token_id, eos_token_id=c.eos_token_id,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).eval()
    sd, st = opt.state_dict(), {}
    st["transformer.wte.weight"] = sd["model.decoder.embed_tokens.weight"]
    st["transformer.wpe.weight"] = sd["model.decoder.embed_positions.weight"][2:]  # OPT's offset of 2
    for n in ("weight", "bias"):
        st[f"transformer.ln_f.{n}"] = sd[f"model.decoder.final_layer_norm.{n}"]
    for i in range(c.num_hidden_layers):
        o, h = f"model.decoder.layers.{i}.", f"transformer.h.{i}."
        for n in ("weight", "bias"):
            st[h + f"ln_1.{n}"] = sd[o + f"self_attn_layer_norm.{n}"]
            st[h + f"ln_2.{n}"] = sd[o + f"final_layer_norm.{n}"]
        st[h + "attn.c_attn.weight"] = torch.cat([sd[o + f"self_attn.{x}_proj.weight"] for x in "qkv"]).T
        st[h + "attn.c_attn.bias"] = torch.cat([sd[o + f"self_attn.{x}_proj.bias"] for x in "qkv"])
        for new, old in (("attn.c_proj", "self_attn.out_proj"), ("mlp.c_fc", "fc1"), ("mlp.c_proj", "fc2")):
            st[h + new + ".weight"], st[h + new + ".bias"] = sd[o + old + ".weight"].T, sd[o + old + ".bias"]
    st["lm_head.weight"] = st["transformer.wte.weight"]
    model.load_state_dict(st, strict=True)
    return model


def test_opt_fixture_rewritten_as_gpt2_compresses_like_the_original() -> None:
    opt_dir = shared_path("models", "opt-fixture")
    opt, tok = sf.load_model(opt_dir)
    calib = sf.data.load(str(shared_path("data", "wikitext2", "wiki.valid.raw")), tok, samples=16, seqlen=128, seed=0)
    ids = sf.data.tokenize_text(sf.data.load_text(str(shared_path("data", "wikitext2", "wiki.test.raw"))).text,
                                tok)[:4096]
    probe = ids[:128].view(1, -1)
    gpt2 = as_gpt2(opt)
    with torch.no_grad():
        ref = opt(input_ids=probe).logits
        assert (gpt2(input_ids=probe).logits - ref).abs().max().item() <= 1e-4 * max(1.0, ref.abs().max().item())
    for config in (sf.SliceGPTConfig(sparsity=0.2, slice_head=True), sf.FASPConfig(sparsity=0.2, attention="heads")):
        a = sf.load_model(opt_dir)[0]
        b = as_gpt2(a)
        sf.compress(a, config, calib, progress=False)
        sf.compress(b, config, calib, progress=False)
        ppl_a = perplexity(a, tok, ids, seqlen=128, batch_size=8, progress=False).ppl
        ppl_b = perplexity(b, tok, ids, seqlen=128, batch_size=8, progress=False).ppl
        assert ppl_b == pytest.approx(ppl_a, rel=2e-3), (config, ppl_a, ppl_b)
