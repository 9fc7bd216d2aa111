"""``composite``: one parameter budget split between residual slicing (SliceGPT) and whole-head /
MLP-channel pruning (FASP); the split is chosen on held-out calibration windows."""

from ..._lazy import lazy_exports
from ..base import register_method
from .config import DEFAULT_SPLITS, CompositeConfig, parse_splits

# the apply function imports torch: loaded on first use
__getattr__, __dir__ = lazy_exports(__name__, {"apply_composite": ".apply"})

__all__ = ["CompositeConfig", "DEFAULT_SPLITS", "apply_composite", "parse_splits"]

register_method("composite", CompositeConfig, f"{__name__}.apply:apply_composite")
