"""GPT-2 (and DistilGPT-2): LayerNorm with bias, learned positions, tied head, ``Conv1D`` projections
(``weight: [in, out]``) and a fused ``attn.c_attn`` (q rows, then k, then v). The Conv1D modules are
held as ``nn.Linear`` and ``c_attn`` as its q/k/v parts while compressing; a plain save writes them
back as GPT-2 stores them. The model passes the cache, mask and encoder states to each block by
position (``block_args``) and reshapes its final hidden states to the embedding width, so residual
slicing needs ``--schedule uniform --slice-head`` (refused otherwise, with that reason)."""

from __future__ import annotations

from typing import Any

from ..base import ArchAdapter, UnsupportedModelError


def check_gpt2(config: Any) -> None:
    if getattr(config, "add_cross_attention", False):
        raise UnsupportedModelError("GPT-2 variant not supported: add_cross_attention=True")


def gpt2_split_sizes(config: Any) -> dict[str, tuple[int, ...]]:
    return {"attn.c_attn": (config.hidden_size,) * 3}


ADAPTER = ArchAdapter(
    name="gpt2",
    model_types=("gpt2",),
    layers="transformer.h",
    embed="transformer.wte",
    pos_embed="transformer.wpe",
    final_norm="transformer.ln_f",
    norm_kind="layer",
    attn_norm="ln_1",
    mlp_norm="ln_2",
    attn="attn",
    q="attn.c_attn.q_proj",
    k="attn.c_attn.k_proj",
    v="attn.c_attn.v_proj",
    o="attn.c_proj",
    up="mlp.c_fc",
    down="mlp.c_proj",
    mlp_width_config_attr="n_inner",
    rope=False,  # learned positional embeddings
    conv1d=("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"),
    unfuse=(("attn.c_attn", ("q_proj", "k_proj", "v_proj")),),
    split_sizes=gpt2_split_sizes,
    block_args=("cache", "attention_mask", "encoder_hidden_states"),
    same_width_ends=True,  # GPT2Model views its output with the embedding's width
    validate=check_gpt2,
    tiny={"config_class": "GPT2Config", "n_inner": 96, "num_attention_heads": 16, "n_positions": 128},
)
