"""SliceGPT (Ashkboos et al., ICLR 2024): PCA rotation of the residual stream + slicing."""

from ..._lazy import lazy_exports
from ..base import register_method
from .config import SliceGPTConfig

__getattr__, __dir__ = lazy_exports(__name__, {"apply_slicegpt": ".apply"})  # imports torch: on first use

__all__ = ["SliceGPTConfig", "apply_slicegpt"]

register_method("slicegpt", SliceGPTConfig, f"{__name__}.apply:apply_slicegpt", offload=True)
