"""Seed-OSS: Llama's layout with q/k/v biases."""

from ._layouts import llama_like

ADAPTER = llama_like("seed_oss", "SeedOssConfig")
