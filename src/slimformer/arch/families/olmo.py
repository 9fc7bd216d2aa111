"""OLMo (1): Llama's module names with a *weightless* LayerNorm (no scale, no bias, epsilon fixed
at 1e-5 in its forward). ``clip_qkv`` clamps q/k/v outputs, which neither rotation nor head
pruning changes."""

from ._layouts import llama_like

ADAPTER = llama_like(
    "olmo", "OlmoConfig", norm_kind="layer", norm_eps=1e-5,
    tiny={"config_class": "OlmoConfig", "intermediate_size": 96, "num_attention_heads": 4,
          "num_key_value_heads": 2, "max_position_embeddings": 128, "clip_qkv": 8.0},
)
