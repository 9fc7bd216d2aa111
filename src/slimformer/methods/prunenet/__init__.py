"""PruneNet (Sengupta et al., ICLR 2025): calibration-free FFN pruning with a learned, reusable policy."""

from .apply import apply_prunenet
from .config import PruneNetConfig
from .policy import Policy, ks_distance, load_policy, save_policy, spectrum_reward, train_policy

__all__ = ["Policy", "PruneNetConfig", "apply_prunenet", "ks_distance", "load_policy", "save_policy",
           "spectrum_reward", "train_policy"]
