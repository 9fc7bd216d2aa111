"""Delete rows/columns of linears by index (structured pruning without rotation).

These are the shared rewrite steps of the pruning methods (FASP, magnitude,
Wanda-SP, random): they keep a model in its original Hugging Face form, so a
uniform result can be exported with a plain config.
"""

from __future__ import annotations

import torch
from torch import nn

from ..arch import ArchAdapter, get_module


@torch.no_grad()
def keep_outputs(lin: nn.Linear, idx: torch.Tensor) -> None:
    """Keep output rows ``idx`` of ``W: [out, in]`` (and of the bias)."""
    idx = idx.to(lin.weight.device)
    lin.weight = nn.Parameter(lin.weight.index_select(0, idx).contiguous(), requires_grad=lin.weight.requires_grad)
    if lin.bias is not None:
        lin.bias = nn.Parameter(lin.bias.index_select(0, idx).contiguous(), requires_grad=lin.bias.requires_grad)
    lin.out_features = int(idx.numel())


@torch.no_grad()
def keep_inputs(lin: nn.Linear, idx: torch.Tensor) -> None:
    """Keep input columns ``idx`` of ``W: [out, in]``."""
    idx = idx.to(lin.weight.device)
    lin.weight = nn.Parameter(lin.weight.index_select(1, idx).contiguous(), requires_grad=lin.weight.requires_grad)
    lin.in_features = int(idx.numel())


def keep_mlp_channels(block: nn.Module, adapter: ArchAdapter, idx: torch.Tensor) -> None:
    """Keep MLP intermediate channels ``idx``: rows of up/gate, columns of down."""
    for path in adapter.mlp_readers:
        keep_outputs(get_module(block, path), idx)
    keep_inputs(get_module(block, adapter.down), idx)
