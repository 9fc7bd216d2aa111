"""PruneNet (Sengupta et al., ICLR 2025): calibration-free FFN pruning with a learned, reusable policy."""

from ..._lazy import lazy_exports
from ..base import register_method
from .config import PruneNetConfig

# everything but the config imports torch: loaded on first use
__getattr__, __dir__ = lazy_exports(__name__, {
    "apply_prunenet": ".apply",
    **{n: ".policy" for n in ("Policy", "ks_distance", "load_policy", "save_policy", "spectrum_reward",
                              "train_policy")},
})

__all__ = ["Policy", "PruneNetConfig", "apply_prunenet", "ks_distance", "load_policy", "save_policy",
           "spectrum_reward", "train_policy"]

register_method("prunenet", PruneNetConfig, f"{__name__}.apply:apply_prunenet",
                needs_calibration=False, accepts_calibration=False)
