"""SliceGPT (Ashkboos et al., ICLR 2024): PCA rotation of the residual stream + slicing."""

from .apply import apply_slicegpt
from .config import SliceGPTConfig

__all__ = ["SliceGPTConfig", "apply_slicegpt"]
