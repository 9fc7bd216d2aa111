"""Apply functions of the baselines: the shared structured-pruning pipeline with another scorer."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ...arch import ArchAdapter
from .._shared.pruning import prune_structured
from .._shared.wanda import WandaScorer
from ..base import Runtime
from .config import MagnitudeConfig, RandomConfig, WandaSPConfig
from .score import MagnitudeScorer, RandomScorer


def apply_magnitude(model: nn.Module, adapter: ArchAdapter, config: MagnitudeConfig, calib_ids: torch.Tensor | None,
                    runtime: Runtime) -> dict[str, Any]:
    """Magnitude pruning of FASP's structures (weights only; calibration only for ``restore``)."""
    return prune_structured(model, adapter, config, calib_ids, runtime, MagnitudeScorer())


def apply_wanda_sp(model: nn.Module, adapter: ArchAdapter, config: WandaSPConfig, calib_ids: torch.Tensor,
                   runtime: Runtime) -> dict[str, Any]:
    """Wanda-SP: FASP's structure score without (by default) restoration."""
    return prune_structured(model, adapter, config, calib_ids, runtime, WandaScorer())


def apply_random(model: nn.Module, adapter: ArchAdapter, config: RandomConfig, calib_ids: torch.Tensor | None,
                 runtime: Runtime) -> dict[str, Any]:
    """Seeded random pruning of FASP's structures."""
    return prune_structured(model, adapter, config, calib_ids, runtime, RandomScorer(config.prune_seed))
