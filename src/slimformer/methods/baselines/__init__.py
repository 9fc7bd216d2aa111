"""Structured pruning baselines on FASP's structures: magnitude, Wanda-SP, random."""

from ..._lazy import lazy_exports
from .config import MagnitudeConfig, RandomConfig, WandaSPConfig

# the apply functions import torch: loaded on first use
__getattr__, __dir__ = lazy_exports(__name__, {n: ".apply" for n in ("apply_magnitude", "apply_random",
                                                                     "apply_wanda_sp")})

__all__ = ["MagnitudeConfig", "RandomConfig", "WandaSPConfig", "apply_magnitude", "apply_random", "apply_wanda_sp"]
