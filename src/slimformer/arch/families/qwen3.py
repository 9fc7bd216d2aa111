"""Qwen3: Llama's layout with per-head q/k RMSNorm over the head dim (q/k head dims cannot be cut)."""

from ._layouts import llama_like

ADAPTER = llama_like("qwen3", "Qwen3Config", head_norms=True)
