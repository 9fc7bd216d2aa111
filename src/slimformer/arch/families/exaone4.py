"""EXAONE-4: sublayer-output norms only (no pre-norms) and per-head q/k RMSNorm over the head dim."""

from ._layouts import LLAMA_TINY, llama_like

ADAPTER = llama_like(
    "exaone4", "Exaone4Config", attn_norm=None, mlp_norm=None, attn_post_norm="post_attention_layernorm",
    mlp_post_norm="post_feedforward_layernorm", head_norms=True,
    tiny={"config_class": "Exaone4Config", **LLAMA_TINY, "sliding_window": 8},
)
