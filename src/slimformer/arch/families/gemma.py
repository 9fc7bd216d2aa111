"""Gemma (1): RMSNorm scales by (1 + weight); embeddings are multiplied by sqrt(hidden) in the model's
own forward (kept: calibration and the saved runtime both run that forward); GeGLU MLP."""

from ._layouts import llama_like

ADAPTER = llama_like("gemma", "GemmaConfig", norm_offset=1.0)
