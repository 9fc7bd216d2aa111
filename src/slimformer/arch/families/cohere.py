"""Cohere (Command-R): parallel attention + MLP reading one bias-free LayerNorm, interleaved RoPE
(q/k channels ``2j`` and ``2j + 1`` rotate together), logits scaled by ``logit_scale`` in the
model's own forward. ``use_qk_norm`` (Command-R+) is refused."""

from __future__ import annotations

from typing import Any

from ..base import UnsupportedModelError
from ._layouts import llama_like


def check_cohere(config: Any) -> None:
    if getattr(config, "use_qk_norm", False):
        raise UnsupportedModelError("Cohere variant not supported: use_qk_norm=True (per-head LayerNorm of q/k)")


ADAPTER = llama_like(
    "cohere", "CohereConfig", norm_kind="layer", mlp_norm=None, wiring="parallel", rope_layout="interleaved",
    validate=check_cohere,
    tiny={"config_class": "CohereConfig", "intermediate_size": 96, "num_attention_heads": 4,
          "num_key_value_heads": 2, "max_position_embeddings": 128, "logit_scale": 0.5},
)
