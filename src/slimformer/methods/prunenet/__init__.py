"""PruneNet (Sengupta et al., ICLR 2025): calibration-free FFN pruning with a learned, reusable policy."""

from ..._lazy import lazy_exports
from ..base import register_method
from .config import PruneNetConfig

# everything but the config imports torch: loaded on first use
__getattr__, __dir__ = lazy_exports(__name__, {
    "apply_prunenet": ".apply",
    **{n: ".policy" for n in ("Policy", "ks_distance", "load_policy", "save_policy", "spectrum_reward",
                              "train_policy")},
    **{n: ".reference" for n in ("ReferencePolicy", "inverse_ks_reward", "reference_log_prob",
                                 "train_reference_policy")},
})

__all__ = ["Policy", "PruneNetConfig", "ReferencePolicy", "apply_prunenet", "inverse_ks_reward", "ks_distance",
           "load_policy", "reference_log_prob", "save_policy", "spectrum_reward", "train_policy",
           "train_reference_policy"]

register_method("prunenet", PruneNetConfig, f"{__name__}.apply:apply_prunenet",
                needs_calibration=False, accepts_calibration=False)
