"""FASP (Hu et al., 2025): structured pruning of interlinked rows/columns with restoration."""

from ..._lazy import lazy_exports
from ..base import register_method
from .config import FASPConfig, PruningConfig

# the apply functions import torch: loaded on first use
__getattr__, __dir__ = lazy_exports(__name__, {"apply_fasp": ".apply", "prune_structured": ".apply"})

__all__ = ["FASPConfig", "PruningConfig", "apply_fasp", "prune_structured"]

register_method("fasp", FASPConfig, f"{__name__}.apply:apply_fasp", offload=True)
