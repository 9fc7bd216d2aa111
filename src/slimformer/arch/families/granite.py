"""Granite (IBM Granite 3.x dense): Llama's layout plus four scalars. ``residual_multiplier``
scales each sublayer's output before it joins the residual (fusion folds it into the writers,
so rotation stays exact); ``embedding_multiplier``, ``attention_multiplier`` and
``logits_scaling`` act in the model's own forward, which the saved runtime keeps."""

from ._layouts import LLAMA_TINY, llama_like

ADAPTER = llama_like(
    "granite", "GraniteConfig", residual_multiplier="residual_multiplier",
    tiny={"config_class": "GraniteConfig", **LLAMA_TINY, "residual_multiplier": 0.37, "embedding_multiplier": 3.0,
          "attention_multiplier": 0.2, "logits_scaling": 2.5},
)
