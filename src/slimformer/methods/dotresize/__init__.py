"""DOTResize (Verma, Murray, Duh, arXiv 2507.04517): width reduction by optimal-transport neuron merging."""

from .apply import apply_dotresize
from .config import DOTResizeConfig

__all__ = ["DOTResizeConfig", "apply_dotresize"]
