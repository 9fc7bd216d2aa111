"""ERNIE-4.5 (dense, 0.3B): Llama's layout with interleaved RoPE (q/k channels ``2j`` and ``2j + 1``
rotate together: MoDeGPT's q/k cut is refused; every other method runs)."""

from ._layouts import llama_like

ADAPTER = llama_like("ernie4_5", "Ernie4_5Config", rope_layout="interleaved")
