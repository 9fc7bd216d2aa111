"""Qwen2 / Qwen2.5: Llama's layout with q/k/v biases (outputs: unaffected by residual rotation)."""

from ._layouts import llama_like

ADAPTER = llama_like("qwen2", "Qwen2Config")
