"""Mixtral: Llama's attention with a sparse mixture-of-experts MLP (``mlp.gate`` router, ``mlp.experts``
stored as 3-D ``gate_up_proj`` / ``down_proj`` tensors). The experts are held as separate MLPs while
compressing; SliceGPT / DOTResize rotate and slice the residual stream through the router and every
expert. Pruning inside the experts is refused (not implemented yet)."""

from ._layouts import LLAMA_TINY, llama_like

ADAPTER = llama_like(
    "mixtral", "MixtralConfig", experts="mlp.experts", router="mlp.gate",
    gate="mlp.experts.0.gate_proj", up="mlp.experts.0.up_proj", down="mlp.experts.0.down_proj",
    tiny={"config_class": "MixtralConfig", **LLAMA_TINY, "intermediate_size": 48, "num_local_experts": 4,
          "num_experts_per_tok": 2},
)
