"""Physically slice a model from hard DISP masks (gather/scatter index sets).

After :func:`export_disp` every decoder block is still the original Hugging Face
block with its full-width norms and residual stream ``[.., d]``; only its linears
change (see :class:`slimformer.runtime.modeling_slimformer.GatherInLinear` /
:class:`~slimformer.runtime.modeling_slimformer.ScatterOutLinear`):

* attention readers (q, k, v) keep the columns ``attn_in`` and gather those channels;
* o keeps the rows (and bias entries) ``attn_out`` and scatters into them;
* MLP readers (gate/up, fc1) keep the rows (and bias entries) ``mlp_mid`` and the
  columns ``mlp_in``, and gather ``mlp_in``;
* down (fc2) keeps the columns ``mlp_mid`` and the rows (and bias entries)
  ``mlp_out``, and scatters into ``mlp_out``.

With the same hard masks the sliced model computes exactly what
:class:`~slimformer.methods.disp.masks.MaskHooks` computes on the dense model (a zero
mask entry on a reader input removes that column's contribution, on a writer output
it zeroes that residual update, on an MLP channel it removes the channel).

Channels are kept in increasing index order. Empty sets are allowed and exact: a
reader with no input channel outputs its bias, a writer with no output channel adds
nothing to the residual (0-width tensors are saved and loaded like any other).
A set that keeps every channel gets no wrapper (plan field ``None``), so an unpruned
sublayer costs nothing extra; ``wrap_full_sets=True`` wraps it anyway (identity
gather/scatter, used to test the runtime).
"""

from __future__ import annotations

import logging
from typing import Sequence

import torch
from torch import nn

from ...arch import ArchAdapter, get_module, set_module
from ...core.fuse import is_slim
from ...core.shrink import keep_inputs, keep_mlp_channels, keep_outputs
from ...runtime.modeling_slimformer import channel_wrapped
from .masks import MASK_KINDS, BlockMasks, block_shapes, check_masks

logger = logging.getLogger("slimformer.methods.disp")


def check_exportable(model: nn.Module, adapter: ArchAdapter) -> None:
    """ValueError unless ``model`` has its original HF blocks with plain ``nn.Linear`` readers/writers."""
    if is_slim(model, adapter):
        raise ValueError("DISP export needs the original Hugging Face blocks; this model was already rotated/fused "
                         "(e.g. by SliceGPT) - start DISP from the dense model")
    paths = (*adapter.attn_readers, adapter.o, *adapter.mlp_readers, adapter.down)
    for i, block in enumerate(adapter.get_layers(model)):
        for path in paths:
            lin = get_module(block, path)
            if type(lin) is not nn.Linear:
                raise ValueError(f"block {i}: {path} is a {type(lin).__name__}, not a plain nn.Linear (was the model "
                                 "already compressed or exported?); DISP export starts from the dense model")


def check_hard(masks: Sequence[BlockMasks]) -> None:
    """ValueError unless every mask entry is exactly 0 or 1 (finite, no soft values)."""
    for i, bm in enumerate(masks):
        for kind, m in bm.items():
            if not isinstance(m, torch.Tensor) or not m.dtype.is_floating_point and m.dtype != torch.bool:
                raise ValueError(f"block {i}: mask {kind} must be a float (or bool) tensor, got {type(m).__name__}"
                                 f"{'' if not isinstance(m, torch.Tensor) else ' of ' + str(m.dtype)}")
            bad = ~((m == 0) | (m == 1))
            if bool(bad.any()):
                j = int(torch.nonzero(bad)[0, 0])
                raise ValueError(f"block {i}: mask {kind} is not hard (entry {j} = {float(m[j]):.4g}); export needs "
                                 "0/1 masks - round the soft masks first (e.g. the hypernetwork's hard output)")


def kept_index(mask: torch.Tensor) -> torch.Tensor:
    """Sorted ``long`` positions ``[k]`` where the hard ``mask: [n]`` is 1 (on the CPU)."""
    return torch.nonzero(mask.detach().to("cpu") != 0, as_tuple=False).flatten()


def _gather(block: nn.Module, path: str, idx: torch.Tensor, d: int, wrap: bool) -> None:
    """Keep input columns ``idx`` of the reader at ``path``; it then gathers ``idx`` from ``[.., d]``."""
    lin = get_module(block, path)
    keep_inputs(lin, idx)
    if wrap:
        set_module(block, path, channel_wrapped(lin, d, in_index=idx))


def _scatter(block: nn.Module, path: str, idx: torch.Tensor, d: int, wrap: bool) -> None:
    """Keep output rows (and bias entries) ``idx`` of the writer at ``path``; it then scatters into ``[.., d]``."""
    lin = get_module(block, path)
    keep_outputs(lin, idx)
    if wrap:
        set_module(block, path, channel_wrapped(lin, d, out_index=idx))


def export_block(block: nn.Module, adapter: ArchAdapter, masks: BlockMasks, wrap_full_sets: bool = False) -> None:
    """Slice one decoder block in place from its hard ``masks`` (see the module docstring)."""
    d = get_module(block, adapter.o).out_features
    idx = {kind: kept_index(getattr(masks, kind)) for kind in MASK_KINDS}

    def wrap(kind: str) -> bool:
        return wrap_full_sets or idx[kind].numel() < d

    keep_mlp_channels(block, adapter, idx["mlp_mid"])  # rows of gate/up (+bias), columns of down
    for path in adapter.attn_readers:
        _gather(block, path, idx["attn_in"], d, wrap("attn_in"))
    for path in adapter.mlp_readers:
        _gather(block, path, idx["mlp_in"], d, wrap("mlp_in"))
    _scatter(block, adapter.o, idx["attn_out"], d, wrap("attn_out"))
    _scatter(block, adapter.down, idx["mlp_out"], d, wrap("mlp_out"))


def export_disp(model: nn.Module, adapter: ArchAdapter, masks: Sequence[BlockMasks], *,
                wrap_full_sets: bool = False) -> None:
    """Physically slice ``model`` in place from hard (0/1) DISP masks, one :class:`BlockMasks` per block.

    Embeddings, norms, head and the residual width ``d`` are unchanged; per block
    ``attn_in, attn_out, mlp_in, mlp_out: [d]`` and ``mlp_mid: [I]`` select the channels
    kept (in increasing order). The attention + MLP parameter count afterwards equals
    :func:`slimformer.methods.disp.masks.kept_params` of the same masks.

    Raises:
        ValueError: the model is not a dense HF model of a supported family, the number of
            masks or a mask length is wrong, or a mask is not 0/1. Nothing is changed then.
    """
    check_exportable(model, adapter)
    shapes = block_shapes(model, adapter)
    check_masks(shapes, masks)
    check_hard(masks)
    layers = adapter.get_layers(model)
    for block, bm in zip(layers, masks):
        export_block(block, adapter, bm, wrap_full_sets)
    kept = [bm.widths() for bm in masks]
    logger.info("DISP export: %d blocks sliced; kept channels of block 0: %s", len(layers), kept[0] if kept else {})


__all__ = ["check_exportable", "check_hard", "export_block", "export_disp", "kept_index"]
