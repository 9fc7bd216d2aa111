"""Norm fusion: bring a model into *slim form* without changing its function.

Slim form (SliceGPT §3.1, Thm 1): every norm is a weightless RMS norm
(:class:`SlimRMSNorm`), the norms' scales/biases live in the linears that read
them, and for LayerNorm families the residual stream is mean-free because every
writer (embeddings, positional embeddings, attention output, MLP output) is
mean-centred. A model in slim form is invariant to any orthogonal rotation of
its residual stream; decoder blocks are :class:`SlimBlock` so that later
rotations can insert shortcut matrices.

RMSNorm families are **not** centred: centring would change their function.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from ..arch import ArchAdapter, get_module, set_module
from ..runtime.modeling_slimformer import SlimBlock, SlimRMSNorm

logger = logging.getLogger("slimformer.core.fuse")


def norm_eps(norm: nn.Module) -> float:
    """The epsilon of a HF RMSNorm / nn.LayerNorm / SlimRMSNorm module."""
    for attr in ("eps", "variance_epsilon"):
        if hasattr(norm, attr):
            return float(getattr(norm, attr))
    raise TypeError(f"cannot find the epsilon of norm module {type(norm).__name__}")


def is_slim(model: nn.Module, adapter: ArchAdapter) -> bool:
    """True when the model's blocks are already SlimBlocks."""
    layers = adapter.get_layers(model)
    return len(layers) > 0 and isinstance(layers[0], SlimBlock)


def _with_bias(root: nn.Module, path: str) -> nn.Linear:
    """Return the linear at ``path``, replaced by an equal one with a zero bias if it had none."""
    lin = get_module(root, path)
    if lin.bias is not None:
        return lin
    new = nn.Linear(lin.in_features, lin.out_features, bias=True, device=lin.weight.device, dtype=lin.weight.dtype)
    with torch.no_grad():
        new.weight.copy_(lin.weight)
        new.bias.zero_()
    set_module(root, path, new)
    return new


@torch.no_grad()
def fold_norm_into_readers(norm: nn.Module, root: nn.Module, reader_paths: list[str]) -> None:
    """Fold ``y = w * x_hat + b`` into readers ``W y + c``: W <- W diag(w), c <- c + W b.

    ``norm.weight``: [d]; reader weight ``W``: [out, d]; computed in float64.
    """
    w = norm.weight.double() if getattr(norm, "weight", None) is not None else None
    b = norm.bias.double() if getattr(norm, "bias", None) is not None else None
    for path in reader_paths:
        lin = get_module(root, path)
        if b is not None and bool(b.abs().max() > 0):
            lin = _with_bias(root, path)
        W = lin.weight.double()  # [out, d]
        if b is not None and lin.bias is not None:
            lin.bias.copy_((lin.bias.double() + W @ b).to(lin.bias.dtype))
        if w is not None:
            lin.weight.copy_((W * w[None, :]).to(lin.weight.dtype))


@torch.no_grad()
def center_writer(lin: nn.Linear) -> None:
    """Make a residual writer's output mean-free over the width: W [d, in] -> W - mean_d(W)."""
    W = lin.weight.double()
    lin.weight.copy_((W - W.mean(dim=0, keepdim=True)).to(lin.weight.dtype))
    if lin.bias is not None:
        b = lin.bias.double()
        lin.bias.copy_((b - b.mean()).to(lin.bias.dtype))


@torch.no_grad()
def center_embedding(emb: nn.Embedding) -> None:
    """Mean-centre each embedding vector: E [V, d] -> E - mean_d(E)."""
    E = emb.weight.double()
    emb.weight.copy_((E - E.mean(dim=1, keepdim=True)).to(emb.weight.dtype))


@torch.no_grad()
def untie_head(model: nn.Module, adapter: ArchAdapter) -> None:
    """Give the LM head its own weight tensor (rotating the embeddings would untie it anyway)."""
    head = get_module(model, adapter.head)
    emb = get_module(model, adapter.embed)
    if head.weight is emb.weight or head.weight.data_ptr() == emb.weight.data_ptr():
        head.weight = nn.Parameter(emb.weight.detach().clone())
        logger.info("untied the LM head from the input embedding")
    model.config.tie_word_embeddings = False
    if hasattr(model, "_tied_weights_keys"):
        model._tied_weights_keys = {}
    text_cfg = getattr(model.config, "get_text_config", None)
    if callable(text_cfg):
        text_cfg().tie_word_embeddings = False


def _replace_norm(root: nn.Module, path: str, width: int) -> float:
    norm = get_module(root, path)
    eps = norm_eps(norm)
    set_module(root, path, SlimRMSNorm(width, width, eps))
    return eps


@torch.no_grad()
def fuse_block(block: nn.Module, adapter: ArchAdapter, config: Any) -> SlimBlock:
    """Slim form of one decoder block: centre its writers (LayerNorm families), fold its
    norms into their readers, replace the norms by SlimRMSNorm, wrap it into a SlimBlock."""
    d = config.hidden_size
    if adapter.norm_kind == "layer":
        for path in adapter.writers:
            center_writer(get_module(block, path))
    attn_readers = list(adapter.attn_readers)
    if adapter.parallel:
        attn_readers += list(adapter.mlp_readers)
    fold_norm_into_readers(get_module(block, adapter.attn_norm), block, attn_readers)
    _replace_norm(block, adapter.attn_norm, d)
    if adapter.mlp_norm is not None:
        fold_norm_into_readers(get_module(block, adapter.mlp_norm), block, list(adapter.mlp_readers))
        _replace_norm(block, adapter.mlp_norm, d)
    modules = {name: get_module(block, name) for name in adapter.block_module_names()}
    return SlimBlock(adapter.block_layout(config), modules)


@torch.no_grad()
def fuse(model: nn.Module, adapter: ArchAdapter, blocks: bool = True) -> None:
    """Bring ``model`` into slim form in place (exact up to float rounding).

    Steps: untie the head; for LayerNorm families centre the embeddings;
    :func:`fuse_block` every decoder block (``blocks=False`` leaves them to the caller,
    e.g. an offloaded model fuses each block when it is loaded:
    :func:`slimformer.calib.offload.fuse_model`); fold the final norm into the head.
    """
    if is_slim(model, adapter):
        return
    d = model.config.hidden_size
    untie_head(model, adapter)
    if adapter.norm_kind == "layer":
        center_embedding(get_module(model, adapter.embed))
        if adapter.pos_embed is not None:
            center_embedding(get_module(model, adapter.pos_embed))
    layers = adapter.get_layers(model)
    if blocks:
        for i, block in enumerate(layers):
            layers[i] = fuse_block(block, adapter, model.config)
    fold_norm_into_readers(get_module(model, adapter.final_norm), model, [adapter.head])
    _replace_norm(model, adapter.final_norm, d)
    logger.info("fused norms of %d blocks (%s, %s norm)", len(layers), adapter.name, adapter.norm_kind)
