"""GPT-NeoX (Pythia, GPT-NeoX-20B): parallel attention and MLP, each reading its own LayerNorm of the
block input (``use_parallel_residual``), partial rotary, and a fused ``attention.query_key_value``
whose rows are grouped per head (head 0's q, k, v, then head 1's, ...); slimformer holds it as its
q/k/v parts and a plain save writes it back in that layout. Sequential variants are refused."""

from __future__ import annotations

from typing import Any

from ..base import ArchAdapter, UnsupportedModelError


def check_neox(config: Any) -> None:
    if not getattr(config, "use_parallel_residual", True):
        raise UnsupportedModelError("GPT-NeoX variant not supported: use_parallel_residual=False")


def neox_split_sizes(config: Any) -> dict[str, tuple[int, ...]]:
    return {"attention.query_key_value": (config.hidden_size,) * 3}


ADAPTER = ArchAdapter(
    name="gpt_neox",
    model_types=("gpt_neox",),
    layers="gpt_neox.layers",
    embed="gpt_neox.embed_in",
    final_norm="gpt_neox.final_layer_norm",
    norm_kind="layer",
    wiring="parallel",
    attn_norm="input_layernorm",
    mlp_norm="post_attention_layernorm",
    attn="attention",
    q="attention.query_key_value.q_proj",
    k="attention.query_key_value.k_proj",
    v="attention.query_key_value.v_proj",
    o="attention.dense",
    up="mlp.dense_h_to_4h",
    down="mlp.dense_4h_to_h",
    unfuse=(("attention.query_key_value", ("q_proj", "k_proj", "v_proj")),),
    interleaved_qkv=("attention.query_key_value",),
    split_sizes=neox_split_sizes,
    validate=check_neox,
    tiny={"config_class": "GPTNeoXConfig", "intermediate_size": 96, "num_attention_heads": 4,
          "max_position_embeddings": 128, "rotary_pct": 0.5},
)
