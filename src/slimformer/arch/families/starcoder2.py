"""StarCoder2: LayerNorm with bias, GQA attention with biases, a non-gated GELU MLP
(``mlp.c_fc`` / ``mlp.c_proj``)."""

from ._layouts import llama_like

ADAPTER = llama_like(
    "starcoder2", "Starcoder2Config", norm_kind="layer", gate=None, up="mlp.c_fc", down="mlp.c_proj",
    tiny={"config_class": "Starcoder2Config", "intermediate_size": 96, "num_attention_heads": 4,
          "num_key_value_heads": 2, "max_position_embeddings": 128, "use_bias": True},
)
