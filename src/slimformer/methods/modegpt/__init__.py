"""MoDeGPT (Lin et al., ICLR 2025): modular decomposition of each block's matrix pairs."""

from .apply import apply_modegpt
from .config import MoDeGPTConfig

__all__ = ["MoDeGPTConfig", "apply_modegpt"]
