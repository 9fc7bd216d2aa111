"""Ministral: Llama's layout; sliding-window layers are applied by the installed attention."""

from ._layouts import llama_like

ADAPTER = llama_like("ministral", "MinistralConfig")
