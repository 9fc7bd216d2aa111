"""Shared layouts: most families are Llama's module names with a few fields changed."""

from __future__ import annotations

from typing import Any

from ..base import ArchAdapter

#: the tiny test shape of a Llama-layout family (GQA 4/2, head dim 16)
LLAMA_TINY: dict[str, Any] = dict(intermediate_size=96, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                                  max_position_embeddings=128)


def llama_like(name: str, config_class: str, **fields: Any) -> ArchAdapter:
    """Llama's layout (RMSNorm, sequential block, gated MLP ``mlp.{gate,up,down}_proj``,
    ``self_attn.{q,k,v,o}_proj``, tied or untied head) with ``fields`` overriding any field.
    ``tiny`` defaults to :data:`LLAMA_TINY` with ``config_class``."""
    base: dict[str, Any] = dict(
        name=name,
        model_types=(name,),
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
        tiny={"config_class": config_class, **LLAMA_TINY},
    )
    base.update(fields)
    return ArchAdapter(**base)
