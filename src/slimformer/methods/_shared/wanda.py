"""The Wanda-style structure score (FASP, Wanda-SP): Wanda scores summed over the column of the second linear."""

from __future__ import annotations

import torch
from torch import nn

from ...arch import ArchAdapter, get_module
from ...core.structures import AttentionShape, vchannel_sum


def wanda_column_scores(W: torch.Tensor, G: torch.Tensor) -> torch.Tensor:
    """``S_j = ||X_j||_2 * sum_i |W_ij|`` per input column ``j`` of ``W: [out, in]``.

    ``||X_j||_2 = sqrt(G_jj)`` with ``G = X^T X`` (``[in, in]``). Returns ``[in]`` float64.
    """
    return G.diagonal().clamp_min(0).sqrt() * W.to(torch.float64).abs().sum(0).to(G.device)


class WandaScorer:
    """MLP channel score = column score of the MLP writer; value channel score = sum of
    the column scores of o over the query heads the channel serves (FASP §3)."""

    needs_activations = True

    def attention(self, layer: int, block: nn.Module, adapter: ArchAdapter, shape: AttentionShape,
                  gram: torch.Tensor | None) -> torch.Tensor:
        """``[n_kv, v_hd]`` value channel scores from ``G_o``."""
        assert gram is not None
        return vchannel_sum(wanda_column_scores(get_module(block, adapter.o).weight, gram), shape)

    def mlp(self, layer: int, block: nn.Module, adapter: ArchAdapter, gram: torch.Tensor | None) -> torch.Tensor:
        """``[I]`` MLP channel scores from ``G_down``."""
        assert gram is not None
        return wanda_column_scores(get_module(block, adapter.down).weight, gram)


__all__ = ["WandaScorer", "wanda_column_scores"]
