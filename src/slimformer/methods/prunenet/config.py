"""Configuration of PruneNet (FFN-only structured pruning, no calibration data)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ...validate import check_fraction, check_int
from .._shared.pruning_config import SHARED_ATTRIBUTES, PruningConfig

#: ``variant``: the library's training (:mod:`.policy`) or the official code's (:mod:`.reference`)
VARIANTS: tuple[str, ...] = ("library", "reference")


@dataclass
class PruneNetConfig(PruningConfig):
    attention: str = "none"
    episodes: int = 60
    lr: float = field(default=1e-2, metadata={"option": "learning_rate", "aliases": ("lr",)})
    gamma: float = 0.99
    policy_hidden: int = 64
    samples: int = field(default=4, metadata={"option": "policy_samples", "aliases": ("samples",)})
    train_sparsity: float | None = None
    policy: str | None = None
    prune_seed: int = 0
    variant: str = field(default="library", metadata={"choices": VARIANTS})

    method = "prunenet"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.attention != "none":
            raise ValueError("prunenet prunes the FFN only (the paper found attention pruning hurt): "
                             f"attention must be 'none', got {self.attention!r}")
        if self.schedule != "uniform":
            raise ValueError(f"prunenet is calibration-free, but schedule {self.schedule!r} needs calibration "
                             "data (Block Influence scores); use schedule 'uniform'")
        if self.variant not in VARIANTS:
            raise ValueError(f"variant must be one of {', '.join(VARIANTS)}, got {self.variant!r}")
        self.episodes = check_int("episodes", self.episodes, 1)
        self.policy_hidden = check_int("policy_hidden", self.policy_hidden, 1)
        self.samples = check_int("samples", self.samples, 1)
        if self.samples < 2 and self.variant == "library":
            raise ValueError("samples must be >= 2 (the REINFORCE baseline is the mean reward of the other samples)")
        if not float(self.lr) > 0:
            raise ValueError(f"lr must be > 0, got {self.lr!r}")
        if not 0.0 < float(self.gamma) <= 1.0:
            raise ValueError(f"gamma must be in (0, 1], got {self.gamma!r}")
        if self.train_sparsity is not None:
            self.train_sparsity = check_fraction("train_sparsity", self.train_sparsity, allow_zero=False)
        if self.policy is not None and not Path(self.policy).is_file():
            raise FileNotFoundError(f"policy file {self.policy} does not exist (it is the policy.safetensors "
                                    "written next to a model compressed with --method prunenet)")
        self.prune_seed = check_int("prune_seed", self.prune_seed)

    def touches(self) -> frozenset[str]:
        """FFN channels (its policy reads one FFN weight matrix per layer: no per-expert policy)."""
        return frozenset({"mlp"})

    @property
    def restores(self) -> bool:
        return False  # restoration would need calibration data


PruneNetConfig.__doc__ = """PruneNet (Sengupta et al., ICLR 2025): a policy network scores FFN channels from the
    weights alone, trained with REINFORCE so the pruned first FFN matrix keeps the singular
    value distribution of the original (Kolmogorov-Smirnov reward). No calibration data.
    attention is always "none" and schedule "uniform" (both need no data).
""" + SHARED_ATTRIBUTES + """\
        episodes: REINFORCE episodes (one pass over all layers each; paper code: 20).
            Default 60: with 20 the policy's top-k keep-sets are no better than random ones
            on stories260k's spectral reward (measured; see policy.py).
        lr: AdamW learning rate of the policy (paper code: 1e-3; default 1e-2, same reason).
        gamma: layer discount, layer i's reward is weighted gamma**i (paper code: 0.99).
        policy_hidden: hidden width of the per-channel policy MLP.
        samples: keep-sets sampled per layer and episode; the baseline of each is the mean
            reward of the others.
        train_sparsity: fraction of channels dropped while training (default: the sparsity
            being applied); a trained policy prunes at any other sparsity without retraining.
        policy: path of a saved policy.safetensors: prune with it, no training.
        prune_seed: seed of the policy initialisation and of the sampled keep-sets.
        variant: "library" (this library's training: MLP policy, reward -KS with a
            baseline, exact draw log-probability, top-k keep-set) or "reference": the official code's
            algorithm (linear policy with binary-concrete noise, reward 1/KS, one draw and
            one AdamW step per layer and episode, loss -reward * sum log o, best episode
            kept, final keep-set a random draw; policy_hidden and samples unused; the
            official settings are episodes 20, learning_rate 1e-3). See docs/prunenet.md.
"""
