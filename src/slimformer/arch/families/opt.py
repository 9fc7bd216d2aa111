"""OPT (pre-LN: 125m, 1.3b, 2.7b, 6.7b, ...): LayerNorm, learned positions, ReLU MLP as two
linears directly in the block (``fc1`` / ``fc2``)."""

from __future__ import annotations

from typing import Any

from ..base import ArchAdapter, UnsupportedModelError


def check_opt(config: Any) -> None:
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


ADAPTER = ArchAdapter(
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
    tiny={"config_class": "OPTConfig", "ffn_dim": 96, "num_attention_heads": 16, "max_position_embeddings": 128,
          "word_embed_proj_dim": 64, "do_layer_norm_before": True},
    validate=check_opt,
)
