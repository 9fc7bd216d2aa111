"""Configurations of the structured pruning baselines (FASP's structures and knobs)."""

from __future__ import annotations

from dataclasses import dataclass

from ...validate import check_int
from .._shared.pruning_config import SHARED_ATTRIBUTES, PruningConfig


@dataclass
class _BaselineConfig(PruningConfig):
    """A baseline: no restoration unless ``restore`` (then FASP's least-squares refit)."""

    restore: bool = False

    @property
    def restores(self) -> bool:
        return bool(self.restore)


_RESTORE_DOC = """        restore: refit the kept weights by least squares as FASP does (needs calibration data).
"""


@dataclass
class MagnitudeConfig(_BaselineConfig):
    """Magnitude: a group's score is the L2 norm of all its weights (rows of the first
    linear(s) and columns of the second). Needs no calibration data without ``restore``."""

    method = "magnitude"


@dataclass
class WandaSPConfig(_BaselineConfig):
    """Wanda-SP: FASP's column score (``||X_j|| * sum_i |W_ij|``), by default without restoration."""

    method = "wanda-sp"


@dataclass
class RandomConfig(_BaselineConfig):
    """Random: uniform scores from a seeded generator (``prune_seed``, per layer)."""

    prune_seed: int = 0

    method = "random"

    def __post_init__(self) -> None:
        super().__post_init__()
        self.prune_seed = check_int("prune_seed", self.prune_seed)


for _cls in (MagnitudeConfig, WandaSPConfig, RandomConfig):
    _cls.__doc__ = (_cls.__doc__ or "").rstrip() + "\n" + SHARED_ATTRIBUTES + _RESTORE_DOC
RandomConfig.__doc__ += "        prune_seed: seed of the random scores (layer i: seed * 1000003 + 2i, +1 for the MLP).\n"
