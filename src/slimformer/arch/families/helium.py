"""Helium (Kyutai): Llama's layout."""

from ._layouts import llama_like

ADAPTER = llama_like("helium", "HeliumConfig")
