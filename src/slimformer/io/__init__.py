"""Saving and loading compressed models (safetensors + config.json + modeling file).

``io.format`` holds the writer/loader; ``runtime.modeling_slimformer`` the self-contained
runtime copied next to every saved model. (Imported lazily to keep ``core`` free of
import cycles.)
"""
