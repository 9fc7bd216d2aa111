"""Qwen3-MoE: Qwen3's attention (per-head q/k norms) with a mixture-of-experts MLP (``mlp.gate``
router, ``mlp.experts`` as 3-D tensors). Variants with dense layers among the MoE ones are refused."""

from ._layouts import LLAMA_TINY, llama_like
from .qwen2_moe import check_all_layers_sparse

ADAPTER = llama_like(
    "qwen3_moe", "Qwen3MoeConfig", head_norms=True, experts="mlp.experts", router="mlp.gate",
    gate="mlp.experts.0.gate_proj", up="mlp.experts.0.up_proj", down="mlp.experts.0.down_proj",
    mlp_width_config_attr="moe_intermediate_size", validate=check_all_layers_sparse,
    tiny={"config_class": "Qwen3MoeConfig", **LLAMA_TINY, "moe_intermediate_size": 48, "num_experts": 4,
          "num_experts_per_tok": 2, "decoder_sparse_step": 1, "mlp_only_layers": []},
)
