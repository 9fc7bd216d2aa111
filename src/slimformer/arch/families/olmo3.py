"""OLMo-3: OLMo-2's blocks (sublayer-output norms only, q/k normalised over all heads) with
sliding-window layers."""

from ._layouts import LLAMA_TINY, llama_like

ADAPTER = llama_like(
    "olmo3", "Olmo3Config", attn_norm=None, mlp_norm=None, attn_post_norm="post_attention_layernorm",
    mlp_post_norm="post_feedforward_layernorm", qk_norm_over_heads=True,
    tiny={"config_class": "Olmo3Config", **LLAMA_TINY, "sliding_window": 8},
)
