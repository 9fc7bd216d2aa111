"""SmolLM3: Llama's layout; some layers skip RoPE (NoPE), which the attention module handles."""

from ._layouts import llama_like

ADAPTER = llama_like("smollm3", "SmolLM3Config")
