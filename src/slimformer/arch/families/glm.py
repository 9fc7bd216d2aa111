"""GLM-4 (dense, ``glm``): Llama's attention with q/k/v biases and interleaved partial RoPE (q/k
channels ``2j`` and ``2j + 1`` rotate together), and a fused ``mlp.gate_up_proj`` held as its parts."""

from __future__ import annotations

from typing import Any

from ._layouts import LLAMA_TINY, llama_like


def glm_split_sizes(config: Any) -> dict[str, tuple[int, ...]]:
    return {"mlp.gate_up_proj": (config.intermediate_size,) * 2}


ADAPTER = llama_like(
    "glm", "GlmConfig", gate="mlp.gate_up_proj.gate_proj", up="mlp.gate_up_proj.up_proj",
    unfuse=(("mlp.gate_up_proj", ("gate_proj", "up_proj")),), split_sizes=glm_split_sizes, rope_layout="interleaved",
    tiny={"config_class": "GlmConfig", **LLAMA_TINY},
)
