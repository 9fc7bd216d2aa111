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


@torch.no_grad()
def merge_mlp_channels(block: nn.Module, adapter: ArchAdapter, T: torch.Tensor) -> None:
    """Merge the MLP intermediate channels with a merge map ``T: [I, k]`` (neuron merging).

    Merged channel ``j`` reads the ``T[:, j]``-weighted combination of the channels'
    input rows (readers ``W: [I, d] -> T^T W: [k, d]``, bias ``b -> T^T b``); the MLP
    writer reads the channels back through the pseudo-inverse
    (``W_down: [d, I] -> W_down (T^+)^T: [d, k]``). A permutation ``T`` is exact;
    merging identical channels with averaging weights loses nothing.
    """
    Td = T.double()
    Tp = torch.linalg.pinv(Td)  # [k, I]
    for path in adapter.mlp_readers:
        lin = get_module(block, path)
        W = lin.weight
        lin.weight = nn.Parameter((Td.T.to(W.device) @ W.double()).to(W.dtype), requires_grad=W.requires_grad)
        if lin.bias is not None:
            b = lin.bias
            lin.bias = nn.Parameter((Td.T.to(b.device) @ b.double()).to(b.dtype), requires_grad=b.requires_grad)
        lin.out_features = Td.shape[1]
    down = get_module(block, adapter.down)
    W = down.weight
    down.weight = nn.Parameter((W.double() @ Tp.T.to(W.device)).to(W.dtype), requires_grad=W.requires_grad)
    down.in_features = Td.shape[1]
