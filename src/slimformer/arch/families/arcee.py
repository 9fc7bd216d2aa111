"""Arcee (AFM): Llama's layout with a non-gated ReLU-squared MLP (``mlp.up_proj`` / ``mlp.down_proj``)."""

from ._layouts import llama_like

ADAPTER = llama_like("arcee", "ArceeConfig", gate=None)
