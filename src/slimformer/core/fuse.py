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
import math
from typing import Any

import torch
from torch import nn

from ..arch import ArchAdapter, UnsupportedModelError, get_module, set_module
from ..runtime.modeling_slimformer import SlimBlock, SlimRMSNorm, SlimRMSNormProject
from .projections import split_projections

logger = logging.getLogger("slimformer.core.fuse")


def norm_eps(norm: nn.Module, default: float | None = None) -> float:
    """The epsilon of a HF RMSNorm / nn.LayerNorm / SlimRMSNorm module; ``default`` for norms that
    do not store one (:attr:`slimformer.arch.ArchAdapter.norm_eps`, e.g. OLMo's 1e-5)."""
    for attr in ("eps", "variance_epsilon"):
        if hasattr(norm, attr):
            return float(getattr(norm, attr))
    if default is not None:
        return float(default)
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
def norm_scale(norm: nn.Module, offset: float = 0.0) -> torch.Tensor | None:
    """The elementwise scale ``offset + weight`` of a norm, float64 ``[d]`` (``None``: weightless).

    ``offset``: :attr:`slimformer.arch.ArchAdapter.norm_offset` (1 for Gemma's RMSNorm)."""
    w = getattr(norm, "weight", None)
    return None if w is None else w.detach().double() + offset


@torch.no_grad()
def fold_norm_into_readers(norm: nn.Module, root: nn.Module, reader_paths: list[str], offset: float = 0.0) -> None:
    """Fold ``y = w * x_hat + b`` into readers ``W y + c``: W <- W diag(w), c <- c + W b.

    ``w = offset + norm.weight``: [d] (:func:`norm_scale`); reader weight ``W``: [out, d];
    computed in float64.
    """
    w = norm_scale(norm, offset)
    b = norm.bias.double() if getattr(norm, "bias", None) is not None else None
    for path in reader_paths:
        lin = get_module(root, path)
        if b is not None and bool(b.abs().max() > 0):
            lin = _with_bias(root, path)
        W = lin.weight.double()  # [out, d]
        if b is not None and getattr(lin, "bias", None) is not None:
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


def _set_tie_flag(model: nn.Module, tied: bool) -> None:
    model.config.tie_word_embeddings = tied
    text_cfg = getattr(model.config, "get_text_config", None)
    if callable(text_cfg):
        text_cfg().tie_word_embeddings = tied


@torch.no_grad()
def untie_head(model: nn.Module, adapter: ArchAdapter) -> None:
    """Give the LM head its own weight tensor (rotating the embeddings would untie it anyway)."""
    head = get_module(model, adapter.head)
    emb = get_module(model, adapter.embed)
    if head.weight is emb.weight or head.weight.data_ptr() == emb.weight.data_ptr():
        head.weight = nn.Parameter(emb.weight.detach().clone())
        logger.info("untied the LM head from the input embedding")
    if hasattr(model, "_tied_weights_keys"):
        model._tied_weights_keys = {}
    _set_tie_flag(model, False)


def tie_head(model: nn.Module, adapter: ArchAdapter, tied_keys: Any = None) -> None:
    """Make the LM head share the input embedding tensor again (undoes :func:`untie_head`).

    ``tied_keys``: the model's ``_tied_weights_keys`` from before untying (restored when given)."""
    head = get_module(model, adapter.head)
    emb = get_module(model, adapter.embed)
    head.weight = emb.weight
    head.in_features = emb.embedding_dim
    if tied_keys is not None and hasattr(model, "_tied_weights_keys"):
        model._tied_weights_keys = tied_keys
    _set_tie_flag(model, True)


@torch.no_grad()
def tie_head_through_projection(
    model: nn.Module, adapter: ArchAdapter, Q0: torch.Tensor | None, QL: torch.Tensor | None, g: torch.Tensor,
    tied_keys: Any = None,
) -> None:
    """Keep-tied SliceGPT: the head becomes the rotated, sliced embedding again.

    With ``E: [V, d]`` the original embedding, ``g: [d]`` the final RMSNorm's weight and
    ``z: [dL]`` the normalised last residual stream in basis ``QL``, the dense head computes
    ``E diag(g) QL z``. The embedding is now ``E Q0: [V, d0]``, so

        logits = (E Q0) (Q0^T diag(g) QL) z = E' M z,     M = Q0^T diag(g) QL: [d0, dL]

    exactly when ``Q0 Q0^T = I`` (no slicing at the embedding), an orthogonal projection of
    the head otherwise. ``M`` runs inside the final norm
    (:class:`~slimformer.runtime.modeling_slimformer.SlimRMSNormProject`), the head shares
    the embedding tensor. ``Q0``/``QL``: ``[d, d0]``/``[d, dL]`` bases (``None`` = identity);
    the untied head left by the rotation is dropped. RMSNorm models only (no final-norm bias).
    """
    emb = get_module(model, adapter.embed)
    head = get_module(model, adapter.head)
    norm = get_module(model, adapter.final_norm)
    if not isinstance(norm, SlimRMSNorm) or head.bias is not None:
        raise ValueError("keep_tied needs a fused RMSNorm model without a head bias")
    d = norm.full_width
    eye = torch.eye(d, dtype=torch.float64)
    Q0d = eye if Q0 is None else Q0.to(torch.float64).cpu()
    QLd = eye if QL is None else QL.to(torch.float64).cpu()
    M = Q0d.T @ (g.to(torch.float64).cpu()[:, None] * QLd)  # [d0, dL]
    new = SlimRMSNormProject(norm.width, d, norm.eps, M.shape[0], dtype=emb.weight.dtype, device=emb.weight.device)
    new.proj.weight.copy_(M.to(emb.weight.dtype))
    set_module(model, adapter.final_norm, new)
    tie_head(model, adapter, tied_keys)
    logger.info("kept the head tied: head-input map %s after the final norm", tuple(M.shape))


@torch.no_grad()
def _rescale_embedding(emb: nn.Module, d: int, w: int) -> float:
    """Embeddings that multiply by ``sqrt(hidden_size)`` in their forward (Gemma's
    ``embed_scale``) would scale by ``sqrt(w)`` once the config says ``hidden_size = w``: fold
    ``r = sqrt(d) / sqrt(w)`` into the weight and set the new scale. Returns ``r`` (1 when the
    embedding has no such scale)."""
    scale = getattr(emb, "embed_scale", None)
    if scale is None:
        return 1.0
    old = float(scale)
    if abs(old - math.sqrt(d)) > 1e-6 * old:
        raise ValueError(f"the embedding scales by {old}, not sqrt(hidden_size): a plain model of another width "
                         "cannot reproduce it; use basis='per-layer'")
    new = math.sqrt(w)
    emb.weight.mul_(old / new)
    scale.fill_(new)
    if hasattr(emb, "scalar_embed_scale"):
        emb.scalar_embed_scale = new
    return old / new


@torch.no_grad()
def to_plain_rmsnorm_model(
    model: nn.Module, adapter: ArchAdapter, layer_cls: type, tie: bool, g0: float = 1.0, tied_keys: Any = None,
) -> None:
    """Turn a slim RMSNorm model rotated with ONE basis ``Q: [d, w]`` everywhere back into the
    base Hugging Face architecture with ``hidden_size = w`` (in place; same function).

    Requires: every block in slim form, no shortcut matrices, residual width ``w`` at every
    point (shared-basis SliceGPT). The fused norm computes ``x sqrt(d) / sqrt(|x|^2 + d eps)``;
    the HF RMSNorm on ``w`` channels computes ``w_n x sqrt(w) / sqrt(|x|^2 + w eps)``. Scaling
    the whole residual stream by ``c = sqrt(w/d)`` (embedding and the writers o/down times
    ``c``) turns the latter into ``w_n x sqrt(w) / (c sqrt(|x|^2 + d eps))``: equal to the fused
    norm for ``w_n = sqrt(d/w)`` with the *same* eps, so ``rms_norm_eps`` (shared with Qwen3's
    per-head q/k norms) stays as it is. Config: ``hidden_size = w``, ``head_dim`` set
    explicitly to the original head dim.

    Head: ``tie`` (the dense head was tied and the final norm weight was the constant
    ``g0``): the head is the scaled embedding ``c E Q`` and the final norm weight becomes
    ``g0 d / w``; otherwise the head keeps its own weight ``E diag(g) Q: [V, w]``.

    Args:
        layer_cls: the base decoder layer class (``LlamaDecoderLayer``; read it before fusion).
    """
    cfg = model.config
    d = int(cfg.hidden_size)
    layers = adapter.get_layers(model)
    emb = get_module(model, adapter.embed)
    w = int(emb.embedding_dim)
    eps = norm_eps(get_module(layers[0], adapter.attn_norm), adapter.norm_eps)
    for i, block in enumerate(layers):
        if not isinstance(block, SlimBlock) or block.attn_shortcut is not None or block.mlp_shortcut is not None:
            raise ValueError(f"block {i} is not a slim block without shortcuts: not a shared-basis model")
        widths = {get_module(block, p).in_features for p in [*adapter.attn_readers, *adapter.mlp_readers]}
        widths |= {get_module(block, p).out_features for p in adapter.writer_paths(block)}
        if widths != {w}:
            raise ValueError(f"block {i} has residual widths {sorted(widths)}, expected {w} everywhere")
    if adapter.norm_kind != "rms" or adapter.parallel or adapter.experts is not None:
        raise ValueError(f"{adapter.name} is not a sequential RMSNorm family with dense MLPs")
    if abs(float(getattr(cfg, "rms_norm_eps", eps)) - eps) > 1e-12 * max(1.0, eps):
        raise ValueError(f"the norms' eps {eps} differs from config.rms_norm_eps {cfg.rms_norm_eps}")
    head_dim = int(getattr(cfg, "head_dim", None) or d // cfg.num_attention_heads)
    c = math.sqrt(w / d)
    s = math.sqrt(d / w)
    emb.weight.mul_(c)
    for block in layers:
        for path in adapter.writer_paths(block):
            lin = get_module(block, path)
            lin.weight.mul_(c)
            if lin.bias is not None:
                lin.bias.mul_(c)
    r = _rescale_embedding(emb, d, w)
    cfg.hidden_size = w
    cfg.head_dim = head_dim
    dtype, device = emb.weight.dtype, emb.weight.device

    def filled(value: float) -> nn.Parameter:
        return nn.Parameter(torch.full((w,), value, dtype=dtype, device=device))

    norm_cls: type | None = None
    for i, block in enumerate(layers):
        with torch.device("meta"):
            fresh = layer_cls(cfg, i)
        for name in adapter.block_module_names():
            if name in (adapter.attn_norm, adapter.mlp_norm):
                norm = get_module(fresh, name)
                norm.weight = filled(s - adapter.norm_offset)
                norm_cls = type(norm)
            else:
                set_module(fresh, name, get_module(block, name))
        left = [n for n, p in fresh.named_parameters() if p.is_meta] + [n for n, b in fresh.named_buffers() if b.is_meta]
        if left:
            raise ValueError(f"rebuilding block {i} as {layer_cls.__name__} left {left[0]} unset")
        layers[i] = fresh.to(device)
    assert norm_cls is not None
    final = norm_cls(w, eps=eps).to(device=device, dtype=dtype)
    head = get_module(model, adapter.head)
    if tie:
        final.weight = filled(g0 * d / w / r - adapter.norm_offset)  # the tied head reads E * r
        tie_head(model, adapter, tied_keys)
    else:
        final.weight = filled(s - adapter.norm_offset)
        head.in_features = w
    set_module(model, adapter.final_norm, final)
    logger.info("shared basis: converted to a plain %s with hidden_size %d (head %s)",
                type(model).__name__, w, "tied" if tie else "untied")


def _replace_norm(root: nn.Module, path: str, width: int, default_eps: float | None = None) -> float:
    norm = get_module(root, path)
    eps = norm_eps(norm, default_eps)
    set_module(root, path, SlimRMSNorm(width, width, eps))
    return eps


def _check_fusable(adapter: ArchAdapter) -> None:
    """Slim form needs every norm to sit before its readers (none on a sublayer's output)."""
    reason = adapter.refusal(frozenset({"residual"}), "norm fusion (slim form)")
    if reason is not None:
        raise UnsupportedModelError(reason)


@torch.no_grad()
def scale_writers(block: nn.Module, adapter: ArchAdapter, scale: float) -> None:
    """Multiply the block's residual writers (weight and bias) by ``scale`` (in float64)."""
    if scale == 1.0:
        return
    for path in adapter.writer_paths(block):
        lin = get_module(block, path)
        lin.weight.copy_((lin.weight.double() * scale).to(lin.weight.dtype))
        if lin.bias is not None:
            lin.bias.copy_((lin.bias.double() * scale).to(lin.bias.dtype))


@torch.no_grad()
def fuse_block(block: nn.Module, adapter: ArchAdapter, config: Any) -> SlimBlock:
    """Slim form of one decoder block: centre its writers (LayerNorm families), fold its
    norms into their readers, replace the norms by SlimRMSNorm, wrap it into a SlimBlock."""
    d = config.hidden_size
    _check_fusable(adapter)
    if adapter.norm_kind == "layer":
        for path in adapter.writer_paths(block):
            center_writer(get_module(block, path))
    if adapter.residual_multiplier is not None:  # Granite: x + s * writer(...) == x + (s W) (...) + s b
        scale_writers(block, adapter, float(getattr(block, adapter.residual_multiplier)))
    attn_readers = list(adapter.attn_readers)
    if adapter.parallel and adapter.mlp_norm is None:  # one norm feeds attention and MLP
        attn_readers += list(adapter.mlp_reader_paths(block))
    fold_norm_into_readers(get_module(block, adapter.attn_norm), block, attn_readers, adapter.norm_offset)
    _replace_norm(block, adapter.attn_norm, d, adapter.norm_eps)
    if adapter.mlp_norm is not None:
        fold_norm_into_readers(get_module(block, adapter.mlp_norm), block, list(adapter.mlp_reader_paths(block)),
                               adapter.norm_offset)
        _replace_norm(block, adapter.mlp_norm, d, adapter.norm_eps)
    modules = {name: get_module(block, name) for name in adapter.block_module_names()}
    return SlimBlock(adapter.block_layout(config), modules)


@torch.no_grad()
def fuse(model: nn.Module, adapter: ArchAdapter, blocks: bool = True) -> None:
    """Bring ``model`` into slim form in place (exact up to float rounding).

    Steps: untie the head; for LayerNorm families centre the embeddings;
    :func:`fuse_block` every decoder block (``blocks=False`` leaves them to the caller,
    e.g. an offloaded model fuses each block when it is loaded:
    :meth:`slimformer.calib.offload.LayerStore.fuse_norms`); fold the final norm into the head.
    """
    if is_slim(model, adapter):
        return
    _check_fusable(adapter)
    d = model.config.hidden_size
    untie_head(model, adapter)
    if adapter.residual_multiplier is not None:  # folded into each block's writers by fuse_block
        setattr(model.config, adapter.residual_multiplier, 1.0)
    if adapter.norm_kind == "layer":
        center_embedding(get_module(model, adapter.embed))
        if adapter.pos_embed is not None:
            center_embedding(get_module(model, adapter.pos_embed))
    layers = adapter.get_layers(model)
    if blocks:
        split_projections(model, adapter)  # fused qkv / gate_up as parts (Phi-3), before folding norms into them
        for i, block in enumerate(layers):
            layers[i] = fuse_block(block, adapter, model.config)
    fold_norm_into_readers(get_module(model, adapter.final_norm), model, [adapter.head], adapter.norm_offset)
    _replace_norm(model, adapter.final_norm, d, adapter.norm_eps)
    logger.info("fused norms of %d blocks (%s, %s norm)", len(layers), adapter.name, adapter.norm_kind)
