"""OLMo-2: no pre-norms; each sublayer's output is normalised (RMSNorm) before it joins the residual,
and q / k are normalised over all heads together. Head / MLP-channel methods run with value-channel
or no attention pruning (removing heads would change the kept heads' q/k scale); residual-stream
methods are refused with the reason."""

from ._layouts import LLAMA_TINY, llama_like

ADAPTER = llama_like(
    "olmo2", "Olmo2Config", attn_norm=None, mlp_norm=None, attn_post_norm="post_attention_layernorm",
    mlp_post_norm="post_feedforward_layernorm", qk_norm_over_heads=True,
    tiny={"config_class": "Olmo2Config", **LLAMA_TINY},
)
