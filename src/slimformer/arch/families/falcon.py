"""Falcon. Its decoder comes in variants, described per config (``specialize``):

* Falcon-7B (``multi_query``, ``parallel_attn``): attention and MLP in parallel on one LayerNorm
  (``input_layernorm``); the fused ``self_attention.query_key_value`` holds all q heads, then the
  one shared k head, then v;
* Falcon-40B/180B (``new_decoder_architecture``): attention and MLP in parallel, each on its own
  LayerNorm (``ln_attn`` / ``ln_mlp``; one ``input_layernorm`` when ``num_ln_in_parallel_attn``
  is 1); ``query_key_value`` rows grouped per kv group (the group's q heads, its k, its v);
* sequential blocks (``parallel_attn=False``) with ``input_layernorm`` / ``post_attention_layernorm``.

The fused projection is held as its q/k/v parts while compressing and written back in the
family's layout by a plain save. ALiBi variants (Falcon-RW) are refused: their per-head biases
are built from the model-wide head count.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from ..base import ArchAdapter, UnsupportedModelError

QKV = "self_attention.query_key_value"


def check_falcon(config: Any) -> None:
    if getattr(config, "alibi", False):
        raise UnsupportedModelError("Falcon variant not supported: alibi=True (Falcon-RW); use a rotary Falcon")


def _head_dim(config: Any) -> int:
    return config.hidden_size // config.num_attention_heads


def _kv_heads(config: Any) -> int:
    if config.new_decoder_architecture:
        return config.num_kv_heads
    return 1 if config.multi_query else config.num_attention_heads


def falcon_split_sizes(config: Any) -> dict[str, tuple[int, ...]]:
    hd = _head_dim(config)
    return {QKV: (config.num_attention_heads * hd, _kv_heads(config) * hd, _kv_heads(config) * hd)}


def specialize(config: Any) -> ArchAdapter:
    """The adapter of this config's decoder variant."""
    new, parallel = bool(config.new_decoder_architecture), bool(getattr(config, "parallel_attn", True))
    two_norms = new and (getattr(config, "num_ln_in_parallel_attn", None) or 2) == 2
    grouped = new or not config.multi_query  # rows grouped per kv group (or per head)
    fields: dict[str, Any] = {"interleaved_qkv": (QKV,) if grouped else ()}
    if two_norms:
        fields.update(wiring="parallel", attn_norm="ln_attn", mlp_norm="ln_mlp")
    elif new or parallel:
        fields.update(wiring="parallel", attn_norm="input_layernorm", mlp_norm=None)
    else:
        fields.update(wiring="sequential", attn_norm="input_layernorm", mlp_norm="post_attention_layernorm")
    return replace(ADAPTER, specialize=None, **fields)


ADAPTER = ArchAdapter(
    name="falcon",
    model_types=("falcon",),
    layers="transformer.h",
    embed="transformer.word_embeddings",
    final_norm="transformer.ln_f",
    norm_kind="layer",
    wiring="parallel",
    attn_norm="ln_attn",
    mlp_norm="ln_mlp",
    attn="self_attention",
    q=f"{QKV}.q_proj",
    k=f"{QKV}.k_proj",
    v=f"{QKV}.v_proj",
    o="self_attention.dense",
    up="mlp.dense_h_to_4h",
    down="mlp.dense_4h_to_h",
    mlp_width_config_attr="ffn_hidden_size",
    unfuse=((QKV, ("q_proj", "k_proj", "v_proj")),),
    interleaved_qkv=(QKV,),
    split_sizes=falcon_split_sizes,
    tuple_output=True,
    as_linear=(QKV, "self_attention.dense", "mlp.dense_h_to_4h", "mlp.dense_4h_to_h"),  # FalconLinear
    validate=check_falcon,
    specialize=specialize,
    tiny={"config_class": "FalconConfig", "num_attention_heads": 4, "num_kv_heads": 2, "new_decoder_architecture": True,
          "ffn_hidden_size": 96, "max_position_embeddings": 128, "alibi": False, "bias": True},
)
