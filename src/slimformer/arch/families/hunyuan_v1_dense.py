"""Hunyuan dense (v1): Llama's layout with per-head q/k norms (query_layernorm / key_layernorm)."""

from ._layouts import llama_like

ADAPTER = llama_like("hunyuan_v1_dense", "HunYuanDenseV1Config", head_norms=True)
