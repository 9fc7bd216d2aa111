"""Interlinked pruning structures of a decoder block, and the one code path that deletes them.

A *structure* (group) is a set of weights that can only go together: deleting one
input column of a block's second linear makes the matching output rows of the
first linear useless. Three kinds, all described through the adapter (never by
module names):

* **MLP channel** ``j`` (``0 <= j < I``): row ``j`` of every MLP reader (gate and
  up; OPT/Phi ``fc1``) and column ``j`` of the MLP writer (down; ``fc2``).
* **Value channel** ``(g, c)``: row ``g * v_hd + c`` of ``v_proj`` (kv head ``g``,
  channel ``c``) and, for *every* query head ``h`` served by kv head ``g``, column
  ``h * v_hd + c`` of ``o_proj``. GQA rule: query head ``h`` reads kv head
  ``h // n_rep`` (``n_rep = n_heads / n_kv_heads``, Hugging Face ``repeat_kv``),
  so a value channel is kept or deleted for its whole group of query heads at once;
  its score is the sum over those heads. Every kv head of a layer keeps the same
  number ``k`` of value channels (the attention code needs one value head dim per
  layer); which ``k`` may differ per head. Kept channels are moved to the front of
  each head, so the saved model needs no index sets (the runtime zero-pads values
  to ``head_dim``: :class:`slimformer.runtime.modeling_slimformer.HeadPadOutLinear`).
* **Head group** ``g``: kv head ``g`` with all its query heads: their rows of
  q, k, v and the matching columns of o. Whole GQA groups go, so the number of
  query heads per kv head never changes.

Q/K channels are never cut here (FASP §3.1: it hurt).

Restoration (FASP): after deleting input columns of a second linear ``W: [out, in]``
whose input ``X: [tokens, in]`` has the Gram matrix ``G = X^T X``, the kept
columns ``S`` are refitted by least squares, ``W' = W G[:, S] G[S, S]^{-1}``
(:func:`restore_columns`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import nn

from ..arch import ArchAdapter, get_module
from ..runtime.modeling_slimformer import attn_relative, set_attention_heads
from ..validate import ATTENTION_MODES  # noqa: F401  (torch-free, for the method configs and the CLI)
from .params import count_params
from .plan import config_head_dim
from .shrink import keep_inputs, keep_mlp_channels, keep_outputs

logger = logging.getLogger("slimformer.core.structures")


@dataclass(frozen=True)
class AttentionShape:
    """Head layout of one block's attention as it is now.

    ``head_dim``: the base head dim attention reshapes with; ``v_head_dim``: value
    channels kept per head (``<= head_dim``).
    """

    n_heads: int
    n_kv_heads: int
    head_dim: int
    v_head_dim: int

    @property
    def n_rep(self) -> int:
        """Query heads per kv head."""
        return self.n_heads // self.n_kv_heads


def attention_shape(block: nn.Module, adapter: ArchAdapter, config: Any) -> AttentionShape:
    """Read the head layout of ``block`` off its projection shapes."""
    hd = config_head_dim(config)
    q, k, v = (get_module(block, p) for p in adapter.attn_readers)
    v_hd = int(getattr(v, "kept_dim", hd))
    return AttentionShape(q.out_features // hd, k.out_features // hd, hd, v_hd)


# ----- group bookkeeping --------------------------------------------------------------


def vchannel_sum(col_values: torch.Tensor, shape: AttentionShape) -> torch.Tensor:
    """Per value channel, the sum of a per-o-column quantity over the query heads it serves.

    ``col_values: [n_heads * v_hd]`` (one value per input column of o) -> ``[n_kv, v_hd]``.
    """
    return col_values.reshape(shape.n_kv_heads, shape.n_rep, shape.v_head_dim).sum(1)


def o_columns(shape: AttentionShape, keep: torch.Tensor) -> torch.Tensor:
    """o input columns kept by value channels ``keep: [n_kv, k]``, head by head, kept-first order.

    Returns ``[n_heads * k]``: for query head ``h`` the columns ``h * v_hd + keep[h // n_rep]``.
    """
    heads = torch.arange(shape.n_heads)
    return (heads[:, None] * shape.v_head_dim + keep[heads // shape.n_rep]).reshape(-1)


def v_rows(shape: AttentionShape, keep: torch.Tensor) -> torch.Tensor:
    """v output rows kept by value channels ``keep: [n_kv, k]`` -> ``[n_kv * k]``."""
    return (torch.arange(shape.n_kv_heads)[:, None] * shape.v_head_dim + keep).reshape(-1)


def head_rows(heads: torch.Tensor, rows_per_head: int) -> torch.Tensor:
    """Rows of whole heads ``heads: [m]`` of ``rows_per_head`` each -> ``[m * rows_per_head]``."""
    return (heads[:, None] * rows_per_head + torch.arange(rows_per_head)).reshape(-1)


def query_heads(kv_heads: torch.Tensor, shape: AttentionShape) -> torch.Tensor:
    """Query heads served by ``kv_heads: [m]`` -> ``[m * n_rep]`` (ascending within each group)."""
    return (kv_heads[:, None] * shape.n_rep + torch.arange(shape.n_rep)).reshape(-1)


def _row_size(lin: nn.Linear) -> int:
    return lin.in_features + (1 if lin.bias is not None else 0)


@dataclass(frozen=True)
class GroupSizes:
    """Parameters one group of each kind holds in a block (weights and biases)."""

    mlp_channel: int
    v_channel: int
    head: int


def group_sizes(block: nn.Module, adapter: ArchAdapter, shape: AttentionShape) -> GroupSizes:
    """Parameters deleted with one MLP channel / value channel / head group of ``block``."""
    mlp = sum(_row_size(get_module(block, p)) for p in adapter.mlp_readers)
    mlp += get_module(block, adapter.down).out_features
    q, k, v = (get_module(block, p) for p in adapter.attn_readers)
    o_out = get_module(block, adapter.o).out_features
    v_ch = _row_size(v) + shape.n_rep * o_out
    head = shape.head_dim * (shape.n_rep * _row_size(q) + _row_size(k))
    head += shape.v_head_dim * (_row_size(v) + shape.n_rep * o_out)
    return GroupSizes(mlp, v_ch, head)


@dataclass(frozen=True)
class LayerCounts:
    """How many groups of each kind a layer keeps.

    ``mlp``: MLP channels; ``v``: value channels per kv head (``None`` = unchanged);
    ``heads``: kv head groups (``None`` = unchanged); ``mlp_units``: MoE blocks: the channels
    each MLP unit keeps (every expert, then the shared expert; ``None`` for dense blocks, where
    ``mlp`` is the one MLP's count).
    """

    mlp: int
    v: int | None = None
    heads: int | None = None
    mlp_units: tuple[int, ...] | None = None

    def unit(self, u: int) -> int:
        """Kept channels of MLP unit ``u`` (:meth:`slimformer.arch.ArchAdapter.mlp_units`)."""
        return self.mlp if self.mlp_units is None else self.mlp_units[u]


def removed_params(block: nn.Module, adapter: ArchAdapter, config: Any, counts: LayerCounts) -> int:
    """Exact number of parameters pruning ``block`` to ``counts`` deletes."""
    shape = attention_shape(block, adapter, config)
    sizes = group_sizes(block, adapter, shape)
    removed = 0
    for u, unit in enumerate(adapter.mlp_units(block)):
        width = get_module(block, unit.down).in_features
        removed += (width - counts.unit(u)) * group_sizes(block, unit, shape).mlp_channel
    if counts.v is not None:
        removed += shape.n_kv_heads * (shape.v_head_dim - counts.v) * sizes.v_channel
    if counts.heads is not None:
        removed += (shape.n_kv_heads - counts.heads) * sizes.head
    return removed


def pruned_param_count(model: nn.Module, adapter: ArchAdapter, counts: Sequence[LayerCounts]) -> int:
    """``sum(p.numel())`` of ``model`` after pruning every block to ``counts[i]`` (exact)."""
    layers = adapter.get_layers(model)
    if len(counts) != len(layers):
        raise ValueError(f"{len(counts)} layer counts for {len(layers)} blocks")
    before = count_params(model)
    return before - sum(removed_params(b, adapter, model.config, c) for b, c in zip(layers, counts))


# ----- selection --------------------------------------------------------------------


def top_k(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the ``k`` highest scores along the last dim, ascending (ties: lower index wins).

    ``scores: [..., n]`` -> ``[..., k]`` (long).
    """
    n = scores.shape[-1]
    if not 1 <= k <= n:
        raise ValueError(f"cannot keep {k} of {n} groups: keep at least 1 and at most {n}")
    order = torch.argsort(-scores.double(), dim=-1, stable=True)[..., :k]
    return torch.sort(order, dim=-1).values


# ----- restoration ------------------------------------------------------------------


@torch.no_grad()
def restore_columns(W: torch.Tensor, G: torch.Tensor, keep: torch.Tensor, damping: float) -> torch.Tensor:
    """Least-squares refit of a second linear on its kept input columns.

    Minimises ``||X W^T - X[:, S] W'^T||_F`` over ``W'``: ``W' = W G[:, S] G[S, S]^{-1}``.

    Args:
        W: ``[out, in]`` weight (torch orientation).
        G: ``[in, in]`` Gram matrix ``X^T X`` of the layer's inputs (float64).
        keep: ``[k]`` kept input columns ``S`` (in the order of the result).
        damping: relative ridge: ``damping * mean(diag G[S, S])`` is added to ``G[S, S]``.
    Returns:
        ``[out, k]`` weight in float64.
    """
    Gd = G.to(torch.float64)
    idx = keep.to(Gd.device)
    Gss = Gd.index_select(0, idx).index_select(1, idx)  # [k, k]
    if damping > 0:
        Gss = Gss + damping * Gss.diagonal().mean() * torch.eye(Gss.shape[0], dtype=Gss.dtype, device=Gss.device)
    rhs = Gd.index_select(1, idx).T @ W.to(Gd).T  # [k, out] = G[S, :] W^T
    try:
        sol = torch.linalg.solve(Gss, rhs)
    except RuntimeError:  # singular (dead channels and no damping): minimum-norm solution
        sol = torch.linalg.lstsq(Gss, rhs, driver="gelsd" if Gss.device.type == "cpu" else None).solution
    return sol.T  # [out, k]


def reconstruction_error(W: torch.Tensor, W_new: torch.Tensor, G: torch.Tensor, keep: torch.Tensor) -> float:
    """Relative output error ``||X W^T - X_S W_new^T||^2 / ||X W^T||^2`` from the Gram matrix.

    ``W: [out, in]``, ``W_new: [out, k]``, ``G: [in, in]``, ``keep: [k]``.
    """
    Gd = G.to(torch.float64)
    D = -W.to(Gd)  # [out, in]: difference of the implied full-width weights
    D[:, keep.to(Gd.device)] += W_new.to(Gd)
    total = torch.einsum("oi,ij,oj->", W.to(Gd), Gd, W.to(Gd))
    err = torch.einsum("oi,ij,oj->", D, Gd, D)
    return float(err / total) if float(total) > 0 else 0.0


# ----- the rewrite ------------------------------------------------------------------


@dataclass
class BlockKeep:
    """What one block keeps.

    Attributes:
        mlp: ``[k]`` kept MLP channels (ascending), or ``None`` = all.
        v: ``[n_kv, k]`` kept value channels per kv head, or ``None`` = all.
        heads: ``[m]`` kept kv head groups (ascending), or ``None`` = all.
        down_weight: optional restored MLP writer weight ``[d_out, k]`` for the kept channels.
        o_weight: optional restored attention writer weight for the kept o columns.
    """

    mlp: torch.Tensor | None = None
    v: torch.Tensor | None = None
    heads: torch.Tensor | None = None
    down_weight: torch.Tensor | None = None
    o_weight: torch.Tensor | None = None


@torch.no_grad()
def _set_weight(lin: nn.Linear, W: torch.Tensor) -> None:
    if tuple(W.shape) != tuple(lin.weight.shape):
        raise ValueError(f"restored weight {tuple(W.shape)} does not fit {tuple(lin.weight.shape)}")
    lin.weight.copy_(W.to(lin.weight))


def kept_o_columns(shape: AttentionShape, keep: BlockKeep) -> torch.Tensor | None:
    """o input columns a :class:`BlockKeep` keeps, in the order the pruned o reads them."""
    if keep.v is not None:
        return o_columns(shape, keep.v)
    if keep.heads is not None:
        return head_rows(query_heads(keep.heads, shape), shape.v_head_dim)
    return None


def prune_block(block: nn.Module, adapter: ArchAdapter, config: Any, keep: BlockKeep) -> None:
    """Delete the groups ``block`` does not keep, in place (the one rewrite path).

    Weights stay in the original Hugging Face modules; value/o projections become
    head-padding linears when the value head dim shrinks.
    """
    if keep.v is not None and keep.heads is not None:
        raise ValueError("prune value channels or whole heads in one step, not both")
    shape = attention_shape(block, adapter, config)
    if keep.mlp is not None:
        keep_mlp_channels(block, adapter, keep.mlp)
        if keep.down_weight is not None:
            _set_weight(get_module(block, adapter.down), keep.down_weight)
    cols = kept_o_columns(shape, keep)
    if cols is None:
        return
    o, v = get_module(block, adapter.o), get_module(block, adapter.v)
    n_heads, v_hd = shape.n_heads, shape.v_head_dim
    if keep.v is not None:
        keep_outputs(v, v_rows(shape, keep.v))
        v_hd = int(keep.v.shape[1])
    else:
        assert keep.heads is not None
        q_heads = query_heads(keep.heads, shape)
        keep_outputs(get_module(block, adapter.q), head_rows(q_heads, shape.head_dim))
        keep_outputs(get_module(block, adapter.k), head_rows(keep.heads, shape.head_dim))
        keep_outputs(v, head_rows(keep.heads, shape.v_head_dim))
        n_heads = int(q_heads.numel())
    keep_inputs(o, cols)
    if keep.o_weight is not None:
        _set_weight(o, keep.o_weight)
    attn = get_module(block, adapter.attn)
    set_attention_heads(attn, attn_relative(adapter.v, adapter.attn), attn_relative(adapter.o, adapter.attn),
                        n_heads, shape.head_dim, v_hd)
