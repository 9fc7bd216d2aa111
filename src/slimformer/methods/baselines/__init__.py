"""Structured pruning baselines on FASP's structures: magnitude, Wanda-SP, random."""

from ..._lazy import lazy_exports
from ..base import register_method
from .config import MagnitudeConfig, RandomConfig, WandaSPConfig

# the apply functions import torch: loaded on first use
__getattr__, __dir__ = lazy_exports(__name__, {n: ".apply" for n in ("apply_magnitude", "apply_random",
                                                                     "apply_wanda_sp")})

__all__ = ["MagnitudeConfig", "RandomConfig", "WandaSPConfig", "apply_magnitude", "apply_random", "apply_wanda_sp"]

register_method("magnitude", MagnitudeConfig, f"{__name__}.apply:apply_magnitude", needs_calibration=False,
                offload=True)
register_method("wanda-sp", WandaSPConfig, f"{__name__}.apply:apply_wanda_sp", offload=True)
register_method("random", RandomConfig, f"{__name__}.apply:apply_random", needs_calibration=False, offload=True)
