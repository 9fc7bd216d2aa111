"""FASP (Hu et al., 2025): structured pruning of interlinked rows/columns with restoration."""

from .apply import apply_fasp, prune_structured
from .config import FASPConfig, PruningConfig

__all__ = ["FASPConfig", "PruningConfig", "apply_fasp", "prune_structured"]
