"""Apertus (Swiss AI): Llama's layout with renamed norms (``attention_layernorm`` /
``feedforward_layernorm``), a non-gated xIELU MLP and per-head q/k RMSNorm."""

from ._layouts import llama_like

ADAPTER = llama_like("apertus", "ApertusConfig", attn_norm="attention_layernorm", mlp_norm="feedforward_layernorm",
                     gate=None, head_norms=True)
