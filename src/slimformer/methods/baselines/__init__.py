"""Structured pruning baselines on FASP's structures: magnitude, Wanda-SP, random."""

from .apply import apply_magnitude, apply_random, apply_wanda_sp
from .config import MagnitudeConfig, RandomConfig, WandaSPConfig

__all__ = ["MagnitudeConfig", "RandomConfig", "WandaSPConfig", "apply_magnitude", "apply_random", "apply_wanda_sp"]
