"""Phi (Phi-1.5, Phi-2): parallel attention + MLP reading one LayerNorm, partial rotary, biases."""

from __future__ import annotations

from typing import Any

from ..base import ArchAdapter, UnsupportedModelError


def check_phi(config: Any) -> None:
    if getattr(config, "qk_layernorm", False):
        raise UnsupportedModelError("Phi variant not supported: qk_layernorm=True")


ADAPTER = ArchAdapter(
    name="phi",
    model_types=("phi",),
    layers="model.layers",
    embed="model.embed_tokens",
    final_norm="model.final_layernorm",
    norm_kind="layer",
    attn_norm="input_layernorm",
    mlp_norm=None,
    wiring="parallel",
    attn="self_attn",
    q="self_attn.q_proj",
    k="self_attn.k_proj",
    v="self_attn.v_proj",
    o="self_attn.dense",
    up="mlp.fc1",
    down="mlp.fc2",
    tiny={"config_class": "PhiConfig", "intermediate_size": 96, "num_attention_heads": 16, "num_key_value_heads": 16,
          "max_position_embeddings": 128, "partial_rotary_factor": 0.5},
    validate=check_phi,
)
