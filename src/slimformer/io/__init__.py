"""Saving and loading compressed models (safetensors + config.json + modeling file)."""

from .format import load_model, save_compressed
from .modeling_slimformer import SlimformerFormatError

__all__ = ["SlimformerFormatError", "load_model", "save_compressed"]
