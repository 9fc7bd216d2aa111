"""Gemma 3 (text): Gemma 2's sandwich blocks plus per-head q/k RMSNorm over the head dim."""

from ._layouts import LLAMA_TINY, llama_like

ADAPTER = llama_like(
    "gemma3_text", "Gemma3TextConfig", norm_offset=1.0, head_norms=True, mlp_norm="pre_feedforward_layernorm",
    attn_post_norm="post_attention_layernorm", mlp_post_norm="post_feedforward_layernorm",
    tiny={"config_class": "Gemma3TextConfig", **LLAMA_TINY, "query_pre_attn_scalar": 16, "sliding_window": 8},
)
