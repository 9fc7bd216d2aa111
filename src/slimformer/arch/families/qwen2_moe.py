"""Qwen1.5-MoE / Qwen2-MoE: a mixture-of-experts MLP (``mlp.gate`` router, ``mlp.experts`` as 3-D
tensors) plus an always-on ``mlp.shared_expert`` scaled by ``sigmoid(mlp.shared_expert_gate(x))``;
q/k/v biases. Variants with dense layers among the MoE ones are refused."""

from __future__ import annotations

from typing import Any

from ..base import UnsupportedModelError
from ._layouts import LLAMA_TINY, llama_like


def check_all_layers_sparse(config: Any) -> None:
    if getattr(config, "mlp_only_layers", None) or getattr(config, "decoder_sparse_step", 1) != 1:
        raise UnsupportedModelError(f"{config.model_type} variant not supported: dense MLP layers among the "
                                    "mixture-of-experts ones (mlp_only_layers / decoder_sparse_step)")


ADAPTER = llama_like(
    "qwen2_moe", "Qwen2MoeConfig", experts="mlp.experts", router="mlp.gate", shared_expert="mlp.shared_expert",
    shared_expert_gate="mlp.shared_expert_gate", shared_expert_width_config_attr="shared_expert_intermediate_size",
    gate="mlp.experts.0.gate_proj", up="mlp.experts.0.up_proj", down="mlp.experts.0.down_proj",
    mlp_width_config_attr="moe_intermediate_size", validate=check_all_layers_sparse,
    tiny={"config_class": "Qwen2MoeConfig", **LLAMA_TINY, "moe_intermediate_size": 48, "num_experts": 4,
          "num_experts_per_tok": 2, "shared_expert_intermediate_size": 64, "decoder_sparse_step": 1,
          "mlp_only_layers": []},
)
