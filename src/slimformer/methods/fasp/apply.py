"""FASP: prune interlinked structures by Wanda-style scores, restore the kept weights.

The pipeline (planning, scoring, restoration ``W' = W G[:, S] G[S, S]^{-1}``, the rewrite)
is the shared structured-pruning path in :mod:`slimformer.methods._shared.pruning`; FASP
is its Wanda scorer (:class:`slimformer.methods._shared.wanda.WandaScorer`) with restoration on.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ...arch import ArchAdapter
from .._shared.pruning import PrunePlan, StructuredPruner, layer_counts, plan_counts, prune_structured
from .._shared.wanda import WandaScorer
from ..base import Runtime
from .config import FASPConfig

#: the former private name of :class:`StructuredPruner` (kept for existing callers)
_Pruner = StructuredPruner


def apply_fasp(model: nn.Module, adapter: ArchAdapter, config: FASPConfig, calib_ids: torch.Tensor,
               runtime: Runtime) -> dict[str, Any]:
    """FASP (Hu et al., 2025): Wanda column scores per structure + least-squares restoration."""
    return prune_structured(model, adapter, config, calib_ids, runtime, WandaScorer())


__all__ = ["PrunePlan", "StructuredPruner", "apply_fasp", "layer_counts", "plan_counts", "prune_structured"]
