"""Scores of the baselines (higher = keep), on FASP's structures."""

from __future__ import annotations

import torch
from torch import nn

from ...arch import ArchAdapter, get_module
from ...core.structures import AttentionShape, vchannel_sum


class MagnitudeScorer:
    """L2 norm of a group's weights: MLP channel ``j`` = rows ``j`` of gate/up and column
    ``j`` of down; value channel = its v row and its o columns for every query head served."""

    needs_activations = False

    def attention(self, layer: int, block: nn.Module, adapter: ArchAdapter, shape: AttentionShape,
                  gram: torch.Tensor | None) -> torch.Tensor:
        o_sq = get_module(block, adapter.o).weight.double().pow(2).sum(0)  # [n_heads * v_hd]
        v_sq = get_module(block, adapter.v).weight.double().pow(2).sum(1)  # [n_kv * v_hd]
        return (vchannel_sum(o_sq, shape) + v_sq.view(shape.n_kv_heads, shape.v_head_dim)).sqrt()

    def mlp(self, layer: int, block: nn.Module, adapter: ArchAdapter, gram: torch.Tensor | None) -> torch.Tensor:
        sq = get_module(block, adapter.down).weight.double().pow(2).sum(0)  # [I]
        for path in adapter.mlp_readers:
            sq = sq + get_module(block, path).weight.double().pow(2).sum(1)
        return sq.sqrt()


class RandomScorer:
    """Uniform random scores; layer ``i`` draws from ``Generator().manual_seed(seed * 1_000_003 + 2 i (+1 for the MLP))``."""

    needs_activations = False

    def __init__(self, seed: int) -> None:
        self.seed = int(seed)

    def _gen(self, layer: int, part: int) -> torch.Generator:
        return torch.Generator().manual_seed(self.seed * 1_000_003 + 2 * layer + part)

    def attention(self, layer: int, block: nn.Module, adapter: ArchAdapter, shape: AttentionShape,
                  gram: torch.Tensor | None) -> torch.Tensor:
        return torch.rand(shape.n_kv_heads, shape.v_head_dim, generator=self._gen(layer, 0))

    def mlp(self, layer: int, block: nn.Module, adapter: ArchAdapter, gram: torch.Tensor | None) -> torch.Tensor:
        return torch.rand(get_module(block, adapter.down).in_features, generator=self._gen(layer, 1))
