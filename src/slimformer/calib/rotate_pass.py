"""The rotate-and-slice pass: choose a basis for every point of the residual stream, apply it.

Shared by the methods that rotate/slice the residual stream (SliceGPT, layer-
redundancy slicing, DOTResize). Each sublayer's forward runs **once** per
calibration batch (the official SliceGPT code runs every block twice):

    embeddings -> cov -> Q_0
    block i (sequential):
        a   = Attn(norm(x))                    # readers already in basis Q_in
        h   = x Q_in^T + a                     # mid stream, original basis [b, t, d]
        cov(h) -> Q_mid; rotate o_proj, shortcut Q_in^T Q_mid, rotate MLP readers
        m   = MLP(norm(h Q_mid))
        o   = (h Q_mid) Q_mid^T + m            # block output, original basis
        cov(o) -> Q_out; rotate down_proj, shortcut Q_mid^T Q_out; x <- o Q_out
    block i (parallel, Phi-2): o = x Q_in^T + Attn(norm(x)) + MLP(norm(x)), cov(o) -> Q_out
    head reads the last Q_out.

The basis at each point is chosen by a :class:`BasisChooser`, which sees the
point's uncentred covariance (float64).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import nn
from tqdm.auto import tqdm

from ..arch import ArchAdapter, get_module
from ..core.rotate import (
    apply_block_input_basis,
    apply_block_mid_basis,
    apply_block_output_basis,
    apply_embedding_basis,
    apply_head_basis,
)
from .runner import BlockInputs
from .source import BlockSource, blocks_or_memory
from .stats import Covariance

logger = logging.getLogger("slimformer.calib.rotate_pass")


@dataclass(frozen=True)
class Point:
    """A point of the residual stream: ``kind`` in {"embed", "mid", "out"}; ``layer`` is
    the block index (-1 for "embed"); ``last`` marks the output of the last block (head input)."""

    kind: str
    layer: int
    last: bool = False


class BasisChooser(Protocol):
    def needs_covariance(self, point: Point) -> bool:
        """Whether :meth:`choose` needs the covariance at ``point``."""

    def choose(self, point: Point, cov: torch.Tensor | None) -> torch.Tensor | None:
        """Basis ``[d, k]`` (orthonormal columns) at ``point``; ``None`` = original basis, full width."""


def _to_stream(x: torch.Tensor, Q: torch.Tensor) -> torch.Tensor:
    """``x: [..., d] -> x @ Q: [..., k]`` in x's dtype."""
    return x @ Q.to(device=x.device, dtype=x.dtype)


def _from_stream(x: torch.Tensor, Q: torch.Tensor) -> torch.Tensor:
    """``x: [..., k] -> x @ Q.T: [..., d]`` (back to the original basis)."""
    return x @ Q.T.to(device=x.device, dtype=x.dtype)


class _RotateSlicePass:
    """The per-block steps of :func:`rotate_and_slice`: choose a basis from a point's covariance,
    rotate/slice the block's readers and writers, carry the cached activations along."""

    def __init__(self, model: nn.Module, adapter: ArchAdapter, chooser: BasisChooser, device: torch.device) -> None:
        self.model, self.adapter, self.chooser, self.device = model, adapter, chooser, device
        self.d = model.config.hidden_size

    def basis(self, point: Point, acts: list[torch.Tensor]) -> torch.Tensor:
        cov = None
        if self.chooser.needs_covariance(point):
            acc = Covariance(self.d)
            for a in acts:
                acc.update(a.to(self.device))
            acc.all_reduce()
            cov = acc.value()
        Q = self.chooser.choose(point, cov)
        if Q is None:
            Q = torch.eye(self.d, dtype=torch.float64)
        return Q.to(torch.float32)

    def sequential_block(self, block: nn.Module, inputs: BlockInputs, Q_in: torch.Tensor, li: int, last: bool) -> torch.Tensor:
        ad = self.adapter
        apply_block_input_basis(block, ad, Q_in)
        mids = []
        for b, (x, kw) in enumerate(zip(inputs.hidden, inputs.kwargs)):
            x = x.to(self.device)
            a = block.attn_branch(x, kw)  # [b, t, d]
            mids.append(inputs.put(_from_stream(x, Q_in) + a))
            inputs.hidden[b] = None  # type: ignore[assignment]  # free as we go
        Q_mid = self.basis(Point("mid", li), mids)
        apply_block_mid_basis(block, ad, Q_in, Q_mid)
        outs = []
        for b, h in enumerate(mids):
            h_rot = _to_stream(h.to(self.device), Q_mid)  # [b, t, k_mid]
            m = block.mlp_branch(h_rot)
            outs.append(inputs.put(_from_stream(h_rot, Q_mid) + m))
            mids[b] = None  # type: ignore[call-overload]
        Q_out = self.basis(Point("out", li, last), outs)
        apply_block_output_basis(block, ad, Q_mid, Q_out)
        inputs.hidden = [inputs.put(_to_stream(o.to(self.device), Q_out)) for o in outs]
        return Q_out

    def parallel_block(self, block: nn.Module, inputs: BlockInputs, Q_in: torch.Tensor, li: int, last: bool) -> torch.Tensor:
        ad = self.adapter
        apply_block_input_basis(block, ad, Q_in)
        outs = []
        for b, (x, kw) in enumerate(zip(inputs.hidden, inputs.kwargs)):
            x = x.to(self.device)
            outs.append(inputs.put(_from_stream(x, Q_in) + block.parallel_branches(x, kw)))
            inputs.hidden[b] = None  # type: ignore[assignment]
        Q_out = self.basis(Point("out", li, last), outs)
        apply_block_output_basis(block, ad, Q_in, Q_out)
        inputs.hidden = [inputs.put(_to_stream(o.to(self.device), Q_out)) for o in outs]
        return Q_out


@torch.no_grad()
def rotate_and_slice(
    model: nn.Module,
    adapter: ArchAdapter,
    inputs: BlockInputs,
    chooser: BasisChooser,
    device: torch.device,
    progress: bool = True,
    *,
    blocks: BlockSource | None = None,
) -> None:
    """Choose and apply a basis at every residual point, block by block (in place).

    ``model`` must be in slim form (``blocks.fuse_norms()``) and ``inputs`` must hold
    block 0's inputs in the original basis; they are consumed. ``blocks``: where the
    decoder blocks come from (default: in memory); each is written back once compressed.
    """
    blocks = blocks_or_memory(blocks, model, adapter)
    run = _RotateSlicePass(model, adapter, chooser, device)
    Q = run.basis(Point("embed", -1), inputs.hidden)
    apply_embedding_basis(model, adapter, Q)
    inputs.hidden = [inputs.put(_to_stream(x.to(device), Q)) for x in inputs.hidden]
    n = blocks.n_layers
    step = run.parallel_block if adapter.parallel else run.sequential_block
    for li in tqdm(range(n), desc="rotate+slice", unit="layer", disable=not progress):
        with blocks.block(li, device) as block:
            Q = step(block, inputs, Q, li, li == n - 1)
        logger.debug("layer %d done", li)
    apply_head_basis(model, adapter, Q)


@torch.no_grad()
def normalized_stream_covariance(
    model: nn.Module,
    adapter: ArchAdapter,
    inputs: BlockInputs,
    device: torch.device,
    progress: bool = True,
    *,
    blocks: BlockSource | None = None,
) -> torch.Tensor:
    """Sum over every residual point of the covariance of what that point's norm hands its readers.

    ``model`` must be in slim form at full width (nothing rotated yet) and ``inputs`` must
    hold block 0's inputs (they are consumed). Points: every block's attention input (block
    0's is the embedding), every sequential block's MLP input, and the last block's output
    (read by the final norm); each contributes ``sum_t n_t n_t^T`` with ``n_t = norm(x_t)``
    (:class:`~slimformer.runtime.modeling_slimformer.SlimRMSNorm`, weights already folded
    into the readers). Returns ``[d, d]`` float64 (all-reduced under torchrun).

    Used by shared-basis SliceGPT: the top eigenvectors of this sum minimise the total
    squared error the readers of *all* points see when one basis slices the whole stream.
    ``blocks``: where the decoder blocks come from (default: in memory); read-only pass.
    """
    d = model.config.hidden_size
    acc = Covariance(d)
    blocks = blocks_or_memory(blocks, model, adapter)
    for li in tqdm(range(blocks.n_layers), desc="stream covariance", unit="layer", disable=not progress):
        with blocks.block(li, device, write=False) as block:
            outs = []
            for b, (x, kw) in enumerate(zip(inputs.hidden, inputs.kwargs)):
                x = x.to(device)  # [b, t, d]
                n = block.attn_in(x)
                acc.update(n)
                h = x + block.attn_out(block._attn(n, kw))
                if adapter.parallel:
                    m = block.mlp_in(x)
                    if adapter.mlp_norm is not None:
                        acc.update(m)
                    out = h + block.mlp_out(block._mlp(m))
                else:
                    m = block.mlp_in(h)
                    acc.update(m)
                    out = h + block.mlp_out(block._mlp(m))
                outs.append(inputs.put(out))
                inputs.hidden[b] = None  # type: ignore[assignment]
            inputs.hidden = outs
    final = get_module(model, adapter.final_norm)
    for x in inputs.hidden:
        acc.update(final(x.to(device)))
    acc.all_reduce()
    return acc.value()
