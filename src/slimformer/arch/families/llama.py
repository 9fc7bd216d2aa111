"""Llama (Llama-2/3/3.1/3.2, TinyLlama, SmolLM): the reference layout."""

from ._layouts import llama_like

ADAPTER = llama_like("llama", "LlamaConfig")
