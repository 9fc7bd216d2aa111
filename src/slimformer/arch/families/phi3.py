"""Phi-3 / Phi-3.5 / Phi-4 (dense): Llama's block with fused projections ``self_attn.qkv_proj``
(rows: q heads, then k heads, then v heads) and ``mlp.gate_up_proj`` (gate rows, then up rows).
slimformer holds each as a FusedLinear of its parts (exact), so every method sees q/k/v and
gate/up; a plain save writes the fused tensors back in the original layout. The attention
splits the fused output with ``config.num_attention_heads``: a layer with fewer heads gets its
own copy of the config (see ``set_attention_heads``)."""

from __future__ import annotations

from typing import Any

from ._layouts import LLAMA_TINY, llama_like


def phi3_split_sizes(config: Any) -> dict[str, tuple[int, ...]]:
    hd = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    q, kv = config.num_attention_heads * hd, config.num_key_value_heads * hd
    return {"self_attn.qkv_proj": (q, kv, kv), "mlp.gate_up_proj": (config.intermediate_size,) * 2}


ADAPTER = llama_like(
    "phi3", "Phi3Config",
    q="self_attn.qkv_proj.q_proj", k="self_attn.qkv_proj.k_proj", v="self_attn.qkv_proj.v_proj",
    gate="mlp.gate_up_proj.gate_proj", up="mlp.gate_up_proj.up_proj",
    unfuse=(("self_attn.qkv_proj", ("q_proj", "k_proj", "v_proj")), ("mlp.gate_up_proj", ("gate_proj", "up_proj"))),
    split_sizes=phi3_split_sizes,
    tiny={"config_class": "Phi3Config", **{k: v for k, v in LLAMA_TINY.items() if k != "head_dim"},
},
)
