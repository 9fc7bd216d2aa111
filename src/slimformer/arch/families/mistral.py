"""Mistral: Llama's layout (sliding-window attention is the attention module's business)."""

from ._layouts import llama_like

ADAPTER = llama_like("mistral", "MistralConfig")
