"""The supported model families, one adapter each (architecture as data)."""

from __future__ import annotations

from typing import Any

from .base import ArchAdapter, UnsupportedModelError


def _check_opt(config: Any) -> None:
    if not getattr(config, "do_layer_norm_before", True):
        raise UnsupportedModelError(
            "OPT variant not supported: post-LN (do_layer_norm_before=False, e.g. OPT-350m); "
            "slimformer needs pre-LN models (OPT-125m, 1.3b, 2.7b, 6.7b, ...)"
        )
    if getattr(config, "word_embed_proj_dim", config.hidden_size) != config.hidden_size:
        raise UnsupportedModelError(
            "OPT variant not supported: post-LN with project_in/project_out "
            "(word_embed_proj_dim != hidden_size, e.g. OPT-350m)"
        )
    if getattr(config, "_remove_final_layer_norm", False):
        raise UnsupportedModelError("OPT variant not supported: _remove_final_layer_norm=True")
    if not getattr(config, "layer_norm_elementwise_affine", True):
        raise UnsupportedModelError("OPT variant not supported: layer_norm_elementwise_affine=False")


def _check_phi(config: Any) -> None:
    if getattr(config, "qk_layernorm", False):
        raise UnsupportedModelError("Phi variant not supported: qk_layernorm=True")


def _llama_like(name: str, model_types: tuple[str, ...], head_norms: bool = False,
                norm_offset: float = 0.0) -> ArchAdapter:
    """Llama-style: RMSNorm, sequential block, gated MLP, tied or untied head."""
    return ArchAdapter(
        head_norms=head_norms,
        norm_offset=norm_offset,
        name=name,
        model_types=model_types,
        layers="model.layers",
        embed="model.embed_tokens",
        final_norm="model.norm",
        norm_kind="rms",
        attn_norm="input_layernorm",
        mlp_norm="post_attention_layernorm",
        attn="self_attn",
        q="self_attn.q_proj",
        k="self_attn.k_proj",
        v="self_attn.v_proj",
        o="self_attn.o_proj",
        gate="mlp.gate_proj",
        up="mlp.up_proj",
        down="mlp.down_proj",
    )


LLAMA = _llama_like("llama", ("llama",))
MISTRAL = _llama_like("mistral", ("mistral",))
QWEN2 = _llama_like("qwen2", ("qwen2",))  # q/k/v biases: outputs, unaffected by residual rotation
QWEN3 = _llama_like("qwen3", ("qwen3",), head_norms=True)  # per-head q/k RMSNorm acts on head dims, not the residual
# Llama's module names, RMSNorm, half-split RoPE: only the description differs. Ministral:
# sliding-window layers (the installed transformers' attention applies them); SmolLM3: some
# layers without RoPE (NoPE); Seed-OSS: q/k/v biases (outputs, unaffected by rotation);
# Hunyuan dense: per-head q/k norms over the head dim (query_layernorm / key_layernorm).
MINISTRAL = _llama_like("ministral", ("ministral",))
HELIUM = _llama_like("helium", ("helium",))
SMOLLM3 = _llama_like("smollm3", ("smollm3",))
SEED_OSS = _llama_like("seed_oss", ("seed_oss",))
HUNYUAN_DENSE = _llama_like("hunyuan_v1_dense", ("hunyuan_v1_dense",), head_norms=True)
# Gemma (1): RMSNorm scales by (1 + weight); embeddings are multiplied by sqrt(hidden_size) in the
# model's own forward (kept: calibration and the saved runtime both run that forward); GeGLU MLP.
GEMMA = _llama_like("gemma", ("gemma",), norm_offset=1.0)

OPT = ArchAdapter(
    name="opt",
    model_types=("opt",),
    layers="model.decoder.layers",
    embed="model.decoder.embed_tokens",
    pos_embed="model.decoder.embed_positions",
    final_norm="model.decoder.final_layer_norm",
    norm_kind="layer",
    attn_norm="self_attn_layer_norm",
    mlp_norm="final_layer_norm",
    attn="self_attn",
    q="self_attn.q_proj",
    k="self_attn.k_proj",
    v="self_attn.v_proj",
    o="self_attn.out_proj",
    up="fc1",
    down="fc2",
    mlp=None,
    act_config_attr="activation_function",
    mlp_width_config_attr="ffn_dim",
    rope=False,  # learned positional embeddings
    validate=_check_opt,
)

PHI = ArchAdapter(
    name="phi",
    model_types=("phi",),
    layers="model.layers",
    embed="model.embed_tokens",
    final_norm="model.final_layernorm",
    norm_kind="layer",
    attn_norm="input_layernorm",
    mlp_norm=None,  # parallel attention + MLP
    attn="self_attn",
    q="self_attn.q_proj",
    k="self_attn.k_proj",
    v="self_attn.v_proj",
    o="self_attn.dense",
    up="mlp.fc1",
    down="mlp.fc2",
    validate=_check_phi,
)

ALL_ADAPTERS: tuple[ArchAdapter, ...] = (LLAMA, MISTRAL, QWEN2, QWEN3, OPT, PHI, MINISTRAL, HELIUM, SMOLLM3,
                                         SEED_OSS, HUNYUAN_DENSE, GEMMA)
