"""Change the basis of the residual stream (rotation, optionally with deletion).

A *basis* is a matrix ``Q: [d, k]`` with orthonormal columns (``k <= d``). A
stream ``x: [..., d]`` expressed in the basis is ``x @ Q: [..., k]``; with
``k < d`` the trailing directions are deleted (SliceGPT slicing). Readers
(linears applied to the normalised stream) become ``W @ Q``; writers become
``Q.T @ W``; a residual between two bases ``Q_a`` and ``Q_b`` needs the
shortcut ``Q_a.T @ Q_b: [k_a, k_b]``.

All transforms run in float32 (or the weight dtype if wider) and the result is
cast back to the weight dtype.
"""

from __future__ import annotations

import torch
from torch import nn

from ..runtime.modeling_slimformer import SlimRMSNorm, make_shortcut, set_router_width


def _work_dtype(t: torch.Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


@torch.no_grad()
def rotate_reader(lin: nn.Linear, Q: torch.Tensor) -> None:
    """Reader ``W: [out, d] -> W @ Q: [out, k]``."""
    W = lin.weight
    dt = _work_dtype(W)
    new = W.to(dt) @ Q.to(device=W.device, dtype=dt)
    lin.weight = nn.Parameter(new.to(W.dtype), requires_grad=W.requires_grad)
    if isinstance(lin, nn.Linear):
        lin.in_features = new.shape[1]
    else:  # a MoE router ([E, d] weight; reshapes its input with hidden_dim)
        set_router_width(lin)


@torch.no_grad()
def rotate_writer(lin: nn.Linear, Q: torch.Tensor) -> None:
    """Writer ``W: [d, in] -> Q.T @ W: [k, in]``, bias ``b: [d] -> Q.T @ b``."""
    W = lin.weight
    dt = _work_dtype(W)
    Qd = Q.to(device=W.device, dtype=dt)
    new = Qd.T @ W.to(dt)
    lin.weight = nn.Parameter(new.to(W.dtype), requires_grad=W.requires_grad)
    lin.out_features = new.shape[0]
    if lin.bias is not None:
        b = lin.bias
        lin.bias = nn.Parameter((Qd.T @ b.to(dt)).to(b.dtype), requires_grad=b.requires_grad)


@torch.no_grad()
def rotate_embedding(emb: nn.Embedding, Q: torch.Tensor) -> None:
    """Embedding ``E: [V, d] -> E @ Q: [V, k]`` (token or learned positional)."""
    E = emb.weight
    dt = _work_dtype(E)
    new = E.to(dt) @ Q.to(device=E.device, dtype=dt)
    emb.weight = nn.Parameter(new.to(E.dtype), requires_grad=E.requires_grad)
    emb.embedding_dim = new.shape[1]


def set_norm_width(norm: SlimRMSNorm, width: int) -> None:
    """Record the (possibly sliced) width a SlimRMSNorm now sees."""
    norm.width = int(width)


def shortcut_between(Q_a: torch.Tensor, Q_b: torch.Tensor, like: torch.Tensor) -> nn.Linear | None:
    """Shortcut ``x_b = x_a @ (Q_a.T @ Q_b)`` or ``None`` when the two bases are the same.

    Q_a: [d, k_a], Q_b: [d, k_b]; ``like`` gives dtype/device of the result.
    """
    if Q_a is Q_b or (Q_a.shape == Q_b.shape and torch.equal(Q_a, Q_b)):
        return None
    dt = torch.float64 if (Q_a.dtype == torch.float64 and Q_b.dtype == torch.float64) else torch.float32
    S = Q_a.to(dt).T @ Q_b.to(dt)  # [k_a, k_b]
    lin = make_shortcut(S.shape[0], S.shape[1], dtype=like.dtype, device=like.device)
    lin.weight.data.copy_(S.T.to(like.dtype))  # nn.Linear stores [out, in]
    return lin


def random_orthogonal(d: int, seed: int = 0, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """A Haar-random orthogonal ``[d, d]`` matrix (QR of a Gaussian, sign-fixed)."""
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(d, d, generator=g, dtype=torch.float64)
    Q, R = torch.linalg.qr(A)
    Q = Q * torch.sign(torch.diagonal(R))[None, :]
    return Q.to(dtype)


# ----- adapter-aware steps on a model in slim form ----------------------------------
# Bases are attached at the points where the residual stream enters a norm:
#   embeddings -> [block i: in_i -> (mid_i) -> out_i = in_{i+1}] -> head.
# Each function below edits only the weights that touch its point.

from ..arch import ArchAdapter, get_module  # noqa: E402  (kept next to their users)


def apply_embedding_basis(model: nn.Module, adapter: ArchAdapter, Q: torch.Tensor) -> None:
    """Express the embeddings' output (token + learned positional) in basis ``Q: [d, k]``."""
    rotate_embedding(get_module(model, adapter.embed), Q)
    if adapter.pos_embed is not None:
        rotate_embedding(get_module(model, adapter.pos_embed), Q)


def apply_block_input_basis(block: nn.Module, adapter: ArchAdapter, Q_in: torch.Tensor) -> None:
    """Block input arrives in basis ``Q_in: [d, k_in]``: rotate the attention readers
    (and, in a parallel block, the MLP readers)."""
    readers = list(adapter.attn_readers) + (list(adapter.mlp_reader_paths(block)) if adapter.parallel else [])
    for path in readers:
        rotate_reader(get_module(block, path), Q_in)
    set_norm_width(get_module(block, adapter.attn_norm), Q_in.shape[1])
    if adapter.parallel and adapter.mlp_norm is not None:  # GPT-NeoX: the MLP's own norm reads the block input
        set_norm_width(get_module(block, adapter.mlp_norm), Q_in.shape[1])


def apply_block_mid_basis(block: nn.Module, adapter: ArchAdapter, Q_in: torch.Tensor, Q_mid: torch.Tensor) -> None:
    """Sequential blocks: attention writes, and the MLP reads, in basis ``Q_mid: [d, k_mid]``."""
    rotate_writer(get_module(block, adapter.o), Q_mid)
    block.attn_shortcut = shortcut_between(Q_in, Q_mid, get_module(block, adapter.o).weight)
    for path in adapter.mlp_reader_paths(block):
        rotate_reader(get_module(block, path), Q_mid)
    set_norm_width(get_module(block, adapter.mlp_norm), Q_mid.shape[1])


def apply_block_output_basis(
    block: nn.Module, adapter: ArchAdapter, Q_prev: torch.Tensor, Q_out: torch.Tensor
) -> None:
    """The block's output leaves in basis ``Q_out: [d, k_out]``.

    ``Q_prev`` is the basis of the residual entering the last residual add:
    ``Q_mid`` for sequential blocks, ``Q_in`` for parallel ones.
    """
    like = get_module(block, adapter.o).weight
    for path in adapter.mlp_writer_paths(block):
        rotate_writer(get_module(block, path), Q_out)
    if adapter.parallel:
        rotate_writer(get_module(block, adapter.o), Q_out)
        block.attn_shortcut = shortcut_between(Q_prev, Q_out, like)
    else:
        block.mlp_shortcut = shortcut_between(Q_prev, Q_out, like)


def apply_head_basis(model: nn.Module, adapter: ArchAdapter, Q: torch.Tensor) -> None:
    """The final norm and head read the last block's output in basis ``Q: [d, k]``."""
    rotate_reader(get_module(model, adapter.head), Q)
    set_norm_width(get_module(model, adapter.final_norm), Q.shape[1])


def rotate_model(
    model: nn.Module,
    adapter: ArchAdapter,
    embed_basis: torch.Tensor,
    block_bases: list[tuple[torch.Tensor | None, torch.Tensor]],
) -> None:
    """Apply a full set of bases at once (used for exactness checks and tests).

    Args:
        embed_basis: basis of block 0's input, ``[d, k_0]``.
        block_bases: per block ``(Q_mid, Q_out)``; ``Q_mid`` is ``None`` for
            parallel blocks. ``Q_out`` of the last block is the head's basis.
    """
    apply_embedding_basis(model, adapter, embed_basis)
    Q_in = embed_basis
    for block, (Q_mid, Q_out) in zip(adapter.get_layers(model), block_bases):
        apply_block_input_basis(block, adapter, Q_in)
        if adapter.parallel:
            apply_block_output_basis(block, adapter, Q_in, Q_out)
        else:
            apply_block_mid_basis(block, adapter, Q_in, Q_mid)
            apply_block_output_basis(block, adapter, Q_mid, Q_out)
        Q_in = Q_out
    apply_head_basis(model, adapter, Q_in)
