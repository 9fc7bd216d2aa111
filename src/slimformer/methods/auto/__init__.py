"""``auto``: compress with several candidate methods/settings and keep the one that scores best
on a held-out slice of the calibration data (never the evaluation text)."""

from ..._lazy import lazy_exports
from ..base import register_method
from .config import DEFAULT_CANDIDATES, AutoConfig, parse_candidates

# the apply function imports torch: loaded on first use
__getattr__, __dir__ = lazy_exports(__name__, {"apply_auto": ".apply"})

__all__ = ["AutoConfig", "DEFAULT_CANDIDATES", "apply_auto", "parse_candidates"]

register_method("auto", AutoConfig, f"{__name__}.apply:apply_auto")
