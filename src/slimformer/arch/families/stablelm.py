"""StableLM (2 / Zephyr): Llama's module names with LayerNorm (weight and bias), partial rotary
and optional q/k/v biases. ``qk_layernorm`` and ``use_parallel_residual`` variants are refused."""

from __future__ import annotations

from typing import Any

from ..base import UnsupportedModelError
from ._layouts import llama_like


def check_stablelm(config: Any) -> None:
    if getattr(config, "qk_layernorm", False):
        raise UnsupportedModelError("StableLM variant not supported: qk_layernorm=True (per-head LayerNorm of q/k)")
    if getattr(config, "use_parallel_residual", False):
        raise UnsupportedModelError("StableLM variant not supported: use_parallel_residual=True")


ADAPTER = llama_like(
    "stablelm", "StableLmConfig", norm_kind="layer", validate=check_stablelm,
    tiny={"config_class": "StableLmConfig", "intermediate_size": 96, "num_attention_heads": 4,
          "num_key_value_heads": 2, "max_position_embeddings": 128, "partial_rotary_factor": 0.5,
          "use_qkv_bias": True},
)
