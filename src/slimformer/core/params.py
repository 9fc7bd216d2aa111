"""Exact parameter count of a residual-sliced model, before compressing it.

Given a *dense* model (or the same model in slim form, full width) and the kept
width at every point of the residual stream, :func:`compressed_param_count`
returns ``sum(p.numel())`` of the model that rotation + slicing with PCA bases
will produce. No calibration is run: the count depends only on shapes.

What changes, per tensor (``w_e``: embedding width, ``w_in/w_mid/w_out``: a
block's residual widths, ``w_h``: head input width):

* token (and OPT learned positional) embeddings ``[V, d] -> [V, w_e]``;
* readers (q/k/v, gate/up, fc1) ``[out, d] -> [out, w]``; a reader gains an
  ``out`` bias when it had none and its norm has a non-zero bias (LayerNorm
  fusion moves the norm bias into the reader, :func:`slimformer.core.fuse.fuse`);
* writers (o, down, fc2) ``[d, in] -> [w, in]`` and their biases ``[d] -> [w]``;
* every residual shortcut exists with PCA bases (two differently rotated points
  never share a basis): ``w_in x w_mid`` and ``w_mid x w_out`` for sequential
  blocks, ``w_in x w_out`` for parallel ones;
* norms have no weights after fusion;
* the head ``[V, d] -> [V, w_h]`` is always a tensor of its own (rotating the
  embeddings unties it), and gains a ``V`` bias from a LayerNorm final norm with
  a non-zero bias.

Everything else (e.g. Qwen3's per-head q/k norms) keeps its size.

Two variants change the head and the shortcuts (:class:`slimformer.methods.slicegpt.SliceGPTConfig`):

* ``keep_tied`` on a tied model: the head stays the (sliced) embedding, counted once, and the
  final norm gains the head-input map ``M: [w_e, w_h]`` (``w_e * w_h`` parameters) instead
  of an untied ``[V, w_h]`` head;
* ``shared_basis``: one basis everywhere, so no shortcut matrices; the result is a plain
  architecture of hidden size ``w`` whose RMSNorms keep a ``[w]`` weight each
  (:func:`slimformer.core.fuse.to_plain_rmsnorm_model`); the head stays tied when
  :func:`shared_basis_keeps_tie` says so, else it is a ``[V, w]`` tensor of its own.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Sequence

from torch import nn

from ..arch import ArchAdapter, get_module

logger = logging.getLogger("slimformer.core.params")


def count_params(model: nn.Module) -> int:
    """Number of distinct parameters (tied tensors once, shortcuts and untied heads included).

    The one parameter count of the library: reports, budgets and predictions all use it.
    """
    return sum(p.numel() for p in model.parameters())


def count_checked(model: nn.Module, predicted: int, log: logging.Logger) -> int:
    """:func:`count_params` of a compressed ``model``, checked against a plan's exact prediction.

    Plans count exactly by construction, so a mismatch is a bug: it is logged on ``log`` as a
    warning (and the real count returned), never misreported silently.
    """
    after = count_params(model)
    if after != predicted:
        log.warning("predicted %d parameters, the compressed model has %d", predicted, after)
    return after


@dataclass(frozen=True)
class ResidualWidths:
    """Kept width at every point of the residual stream.

    Attributes:
        embed: width of block 0's input (token and positional embeddings).
        mid: per block, the width between attention and MLP (``None`` for
            parallel blocks, which have no such point).
        out: per block, the width leaving the block; ``out[-1]`` is the head's
            input width.
    """

    embed: int
    mid: tuple[int | None, ...]
    out: tuple[int, ...]

    def __post_init__(self) -> None:
        if len(self.mid) != len(self.out):
            raise ValueError(f"mid has {len(self.mid)} entries but out has {len(self.out)}")
        for w in (self.embed, *self.out, *(m for m in self.mid if m is not None)):
            if int(w) < 1:
                raise ValueError(f"every residual width must be >= 1, got {w}")

    @property
    def n_layers(self) -> int:
        return len(self.out)

    def block_in(self, i: int) -> int:
        """Width entering block ``i``."""
        return self.embed if i == 0 else self.out[i - 1]

    def of(self, point: Any) -> int:
        """Width at a :class:`slimformer.calib.rotate_pass.Point` (``kind`` in embed/mid/out)."""
        if point.kind == "embed":
            return self.embed
        if point.kind == "mid":
            w = self.mid[point.layer]
            if w is None:
                raise ValueError(f"block {point.layer} is parallel and has no mid point")
            return w
        if point.kind == "out":
            return self.out[point.layer]
        raise ValueError(f"unknown residual point kind {point.kind!r}")

    def to_dict(self) -> dict[str, Any]:
        return {"embed": self.embed, "mid": list(self.mid), "out": list(self.out)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ResidualWidths":
        return cls(int(data["embed"]), tuple(data["mid"]), tuple(int(w) for w in data["out"]))

    @classmethod
    def from_layer_widths(
        cls, layer_widths: Sequence[int], full_width: int, parallel: bool, slice_head: bool
    ) -> "ResidualWidths":
        """Point widths from one width ``w_i`` per block.

        Block ``i`` reads (and its attention writes) at ``w_i``; its MLP writes at
        ``w_{i+1}``. The last block writes at full width unless ``slice_head``, in
        which case it keeps ``w_{L-1}`` (the head reads the last layer's width).
        """
        w = [int(x) for x in layer_widths]
        if not w:
            raise ValueError("a model needs at least one block")
        last = w[-1] if slice_head else int(full_width)
        out = tuple(w[1:] + [last])
        mid = tuple(None if parallel else x for x in w)
        return cls(w[0], mid, out)

    @classmethod
    def uniform(cls, k: int, n_layers: int, full_width: int, parallel: bool, slice_head: bool) -> "ResidualWidths":
        """The same width ``k`` everywhere (SliceGPT's constant slicing)."""
        return cls.from_layer_widths([k] * n_layers, full_width, parallel, slice_head)


def _gains_bias(lin: nn.Linear, norm: nn.Module) -> bool:
    """True when fusing ``norm`` into reader ``lin`` adds a bias (same test as ``fold_norm_into_readers``)."""
    b = getattr(norm, "bias", None)
    return getattr(lin, "bias", None) is None and b is not None and bool(b.abs().max() > 0)


class _Counter:
    """Collects the post-compression size of every touched parameter (by identity)."""

    def __init__(self) -> None:
        self.new: dict[int, int] = {}  # id(param) -> numel after compression
        self.extra = 0  # tensors that do not exist in the dense model

    def reader(self, lin: nn.Linear, width: int, norm: nn.Module) -> None:
        self.new[id(lin.weight)] = lin.weight.shape[0] * width  # (a MoE router is no nn.Linear)
        if _gains_bias(lin, norm):
            self.extra += lin.out_features

    def writer(self, lin: nn.Linear, width: int) -> None:
        self.new[id(lin.weight)] = width * lin.in_features
        if lin.bias is not None:
            self.new[id(lin.bias)] = width

    def drop(self, module: nn.Module) -> None:
        for p in module.parameters():
            self.new[id(p)] = 0

    def resize(self, norm: nn.Module, width: int) -> None:
        """A norm that keeps one ``[width]`` weight (shared basis: a plain RMSNorm of the kept width)."""
        for p in norm.parameters():
            self.new[id(p)] = width


def _check_full_width(model: nn.Module, adapter: ArchAdapter, d: int) -> None:
    for i, block in enumerate(adapter.get_layers(model)):
        q = get_module(block, adapter.q)
        if q.in_features != d:
            raise ValueError(
                f"block {i} already reads width {q.in_features} != hidden_size {d}: "
                "count parameters on the dense (uncompressed) model"
            )


def is_tied(model: nn.Module, adapter: ArchAdapter) -> bool:
    """True when the LM head *is* the input embedding tensor."""
    return get_module(model, adapter.head).weight is get_module(model, adapter.embed).weight


def shared_basis_keeps_tie(model: nn.Module, adapter: ArchAdapter) -> bool:
    """Whether a shared-basis model can keep its head tied: the head is tied and the final norm's
    weight ``g`` is one constant (then ``diag(g)`` commutes with the rotation and moves into the
    final norm's own weight; any other ``g`` needs an untied head ``E diag(g) Q``).

    Call it on the dense model (before fusion folds ``g`` into the head)."""
    if not is_tied(model, adapter):
        return False
    g = getattr(get_module(model, adapter.final_norm), "weight", None)
    return g is None or bool((g == g.reshape(-1)[0]).all())


def compressed_param_count(
    model: nn.Module, adapter: ArchAdapter, widths: ResidualWidths, *, keep_tied: bool = False,
    shared_basis: bool = False,
) -> int:
    """Parameters of ``model`` after PCA rotation + slicing to ``widths``.

    Args:
        model: the dense model (or the same model in slim form, still full width).
        adapter: its architecture adapter.
        widths: kept width at every residual point (``widths.out[-1]`` = head input).
        keep_tied: keep-tied SliceGPT (see the module docstring; no effect on an untied model).
        shared_basis: shared-basis SliceGPT (``widths`` must be one width everywhere).
    Returns:
        ``sum(p.numel())`` the compressed model will have (shared tensors once).
    """
    d = model.config.hidden_size
    layers = adapter.get_layers(model)
    if widths.n_layers != len(layers):
        raise ValueError(f"widths describe {widths.n_layers} blocks, the model has {len(layers)}")
    _check_full_width(model, adapter, d)
    if shared_basis:
        kept = {widths.embed, *widths.out, *(m for m in widths.mid if m is not None)}
        if len(kept) != 1:
            raise ValueError(f"shared_basis needs one width at every residual point, got {sorted(kept)}")
    c = _Counter()
    emb = get_module(model, adapter.embed)
    c.new[id(emb.weight)] = emb.num_embeddings * widths.embed
    if adapter.pos_embed is not None:
        pos = get_module(model, adapter.pos_embed)
        c.new[id(pos.weight)] = pos.num_embeddings * widths.embed
    for i, block in enumerate(layers):
        w_in, w_mid, w_out = widths.block_in(i), widths.mid[i], widths.out[i]
        attn_norm = get_module(block, adapter.attn_norm)
        for path in adapter.attn_readers:
            c.reader(get_module(block, path), w_in, attn_norm)
        if adapter.parallel:
            mlp_norm = attn_norm if adapter.mlp_norm is None else get_module(block, adapter.mlp_norm)
            for path in adapter.mlp_reader_paths(block):
                c.reader(get_module(block, path), w_in, mlp_norm)
            if mlp_norm is not attn_norm:
                c.drop(mlp_norm)
            c.writer(get_module(block, adapter.o), w_out)
            if not shared_basis:
                c.extra += w_in * w_out  # the block's single shortcut
        else:
            if w_mid is None:
                raise ValueError(f"block {i} is sequential but widths.mid[{i}] is None")
            mlp_norm = get_module(block, adapter.mlp_norm)
            for path in adapter.mlp_reader_paths(block):
                c.reader(get_module(block, path), w_mid, mlp_norm)
            c.writer(get_module(block, adapter.o), w_mid)
            if shared_basis:  # plain RMSNorm of width w_mid again, no shortcuts (one basis)
                c.resize(mlp_norm, w_mid)
            else:
                c.drop(mlp_norm)
                c.extra += w_in * w_mid + w_mid * w_out  # attention and MLP shortcuts
        for path in adapter.mlp_writer_paths(block):
            c.writer(get_module(block, path), w_out)
        if shared_basis:
            c.resize(attn_norm, w_in)
        else:
            c.drop(attn_norm)
    final_norm = get_module(model, adapter.final_norm)
    head = get_module(model, adapter.head)
    head_weight = head.out_features * widths.out[-1]  # [V, w_head]
    if _gains_bias(head, final_norm):
        c.extra += head.out_features  # final LayerNorm bias moved into the head
    if shared_basis:
        c.resize(final_norm, widths.out[-1])
        if shared_basis_keeps_tie(model, adapter):
            head_weight = 0  # still the embedding, counted once
    else:
        c.drop(final_norm)
    if head.weight is emb.weight and keep_tied and not shared_basis:
        c.extra += widths.embed * widths.out[-1]  # head-input map M; the head stays the embedding
    elif head.weight is emb.weight:
        c.extra += head_weight  # tied: the rotation unties it, a tensor of its own
    else:
        c.new[id(head.weight)] = head_weight
    total = sum(c.new.get(id(p), p.numel()) for p in model.parameters()) + c.extra
    logger.debug("predicted %d parameters for widths %s", total, widths.to_dict())
    return total


def removed_fraction(model: nn.Module, adapter: ArchAdapter, widths: ResidualWidths, **variant: bool) -> float:
    """Fraction of ``model``'s current parameters that slicing to ``widths`` removes (may be < 0).

    ``variant``: ``keep_tied`` / ``shared_basis`` as in :func:`compressed_param_count`."""
    before = count_params(model)
    return 1.0 - compressed_param_count(model, adapter, widths, **variant) / before
