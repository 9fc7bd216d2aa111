"""DOTResize (Verma, Murray, Duh, arXiv 2507.04517): width reduction by optimal-transport neuron merging."""

from ..._lazy import lazy_exports
from ..base import register_method
from .config import DOTResizeConfig

__getattr__, __dir__ = lazy_exports(__name__, {"apply_dotresize": ".apply"})  # imports torch: on first use

__all__ = ["DOTResizeConfig", "apply_dotresize"]

register_method("dotresize", DOTResizeConfig, f"{__name__}.apply:apply_dotresize", offload=True)
