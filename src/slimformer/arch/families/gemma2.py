"""Gemma 2: (1 + w) RMSNorm before *and after* each sublayer ("sandwich" blocks), logit
soft-capping in attention and head (the model's own forward). The post-sublayer norms stop
residual rotation (SliceGPT, DOTResize on the residual, DISP are refused with the reason);
head / MLP-channel pruning runs inside the blocks."""

from ._layouts import LLAMA_TINY, llama_like

ADAPTER = llama_like(
    "gemma2", "Gemma2Config", norm_offset=1.0, mlp_norm="pre_feedforward_layernorm",
    attn_post_norm="post_attention_layernorm", mlp_post_norm="post_feedforward_layernorm",
    tiny={"config_class": "Gemma2Config", **LLAMA_TINY, "query_pre_attn_scalar": 16, "sliding_window": 8},
)
