"""MoDeGPT (Lin et al., ICLR 2025): modular decomposition of each block's matrix pairs."""

from ..._lazy import lazy_exports
from ..base import register_method
from .config import MoDeGPTConfig

__getattr__, __dir__ = lazy_exports(__name__, {"apply_modegpt": ".apply"})  # imports torch: on first use

__all__ = ["MoDeGPTConfig", "apply_modegpt"]

register_method("modegpt", MoDeGPTConfig, f"{__name__}.apply:apply_modegpt", offload=True)
