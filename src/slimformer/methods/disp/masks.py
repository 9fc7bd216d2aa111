"""DISP-LLM's per-block channel masks, applied to the *unchanged* HF model, and exact counting.

Every decoder block gets five masks (Gao et al., 2024, "dimension-independent"
pruning: each sublayer reads and writes its own subset of the full-width residual
stream; the residual itself, the embeddings, the norms and the head keep width ``d``):

* ``attn_in  [d]`` multiplies the (normalised) input of every attention reader (q, k, v);
* ``attn_out [d]`` multiplies the output of o (bias included) before it is added to the residual;
* ``mlp_in   [d]`` multiplies the input of the MLP readers (gate/up, or fc1);
* ``mlp_mid  [I]`` multiplies the input of down (fc2), i.e. the MLP intermediate channels;
* ``mlp_out  [d]`` multiplies the output of down (bias included).

As in the official code the norm sees the full-width stream and the selection happens
after it (so norms are not pruned). Heads and head_dim are not pruned. With hard
(0/1) masks the masked model equals the physically sliced one (gather the kept input
channels of the readers, scatter-add the kept output channels of the writers).

Parameter counting (:func:`kept_params`) is differentiable in the masks, so the
same function is the training regulariser (soft or straight-through masks) and the
exact count of the exported model (hard masks).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, fields
from typing import Any, Iterator, Sequence

import torch
from torch import nn

from ...arch import ArchAdapter
from ...core.params import count_params

logger = logging.getLogger("slimformer.methods.disp")

#: the five mask kinds, in the order used everywhere (hypernetwork heads, reports)
MASK_KINDS: tuple[str, ...] = ("attn_in", "attn_out", "mlp_in", "mlp_mid", "mlp_out")


@dataclass
class BlockMasks:
    """The five masks of one decoder block (float tensors; 0/1 when hard, in (0, 1) when soft).

    Attributes:
        attn_in: ``[d]`` multiplies the input of every attention reader (q, k, v).
        attn_out: ``[d]`` multiplies the output of o (incl. its bias).
        mlp_in: ``[d]`` multiplies the input of the MLP readers (gate/up or fc1).
        mlp_mid: ``[I]`` multiplies the input of down (fc2).
        mlp_out: ``[d]`` multiplies the output of down (incl. its bias).
    """

    attn_in: torch.Tensor
    attn_out: torch.Tensor
    mlp_in: torch.Tensor
    mlp_mid: torch.Tensor
    mlp_out: torch.Tensor

    def items(self) -> Iterator[tuple[str, torch.Tensor]]:
        """``(kind, mask)`` pairs in :data:`MASK_KINDS` order."""
        for f in fields(self):
            yield f.name, getattr(self, f.name)

    def detach(self) -> "BlockMasks":
        return BlockMasks(**{k: m.detach() for k, m in self.items()})

    def to(self, *args: Any, **kwargs: Any) -> "BlockMasks":
        return BlockMasks(**{k: m.to(*args, **kwargs) for k, m in self.items()})

    def is_hard(self) -> bool:
        """True when every entry is exactly 0 or 1."""
        return all(bool(((m == 0) | (m == 1)).all()) for _, m in self.items())

    def kept(self, kind: str) -> torch.Tensor:
        """Index set (sorted ``long`` tensor) of the channels a *hard* mask keeps."""
        m = getattr(self, kind)
        return torch.nonzero(m.detach() > 0.5, as_tuple=False).flatten()

    def widths(self) -> dict[str, int]:
        """Number of kept channels per kind (masks rounded at 0.5)."""
        return {k: int((m.detach() > 0.5).sum()) for k, m in self.items()}


# ----- shapes the count depends on ---------------------------------------------------------
@dataclass(frozen=True)
class BlockShapes:
    """What the parameter count of one block depends on (read from the model through the adapter).

    Attributes:
        d: residual width (in features of the readers).
        inter: MLP intermediate width ``I`` (in features of down).
        attn_reader_out: ``sum`` of the output features of q, k and v.
        attn_reader_bias: bias entries of q, k, v (kept whole: their outputs are not pruned).
        o_in: input features of o (``n_heads * head_dim``).
        o_bias: o has a bias (``[d]``, pruned with ``attn_out``).
        mlp_readers: number of MLP readers (2 for gate/up, 1 for fc1).
        mlp_reader_bias: number of MLP readers with a bias (each ``[I]``, pruned with ``mlp_mid``).
        down_bias: down has a bias (``[d]``, pruned with ``mlp_out``).
    """

    d: int
    inter: int
    attn_reader_out: int
    attn_reader_bias: int
    o_in: int
    o_bias: bool
    mlp_readers: int
    mlp_reader_bias: int
    down_bias: bool

    def full_params(self) -> int:
        """Attention + MLP parameters of the unpruned block."""
        d, i = self.d, self.inter
        attn = d * self.attn_reader_out + self.attn_reader_bias + self.o_in * d + (d if self.o_bias else 0)
        mlp = self.mlp_readers * d * i + self.mlp_reader_bias * i + i * d + (d if self.down_bias else 0)
        return attn + mlp


def _linear(block: nn.Module, adapter: ArchAdapter, path: str) -> nn.Linear:
    lin = adapter.get(block, path)
    if not isinstance(lin, nn.Linear):
        raise TypeError(f"DISP needs nn.Linear at {path!r}, found {type(lin).__name__} "
                        "(was the model already compressed? DISP starts from the dense HF model)")
    return lin


def _nbias(lin: nn.Linear) -> int:
    return 0 if lin.bias is None else lin.bias.numel()


def block_shapes(model: nn.Module, adapter: ArchAdapter) -> list[BlockShapes]:
    """One :class:`BlockShapes` per decoder block of the dense ``model``."""
    shapes = []
    for i, block in enumerate(adapter.get_layers(model)):
        readers = [_linear(block, adapter, p) for p in adapter.attn_readers]
        o = _linear(block, adapter, adapter.o)
        mlp_readers = [_linear(block, adapter, p) for p in adapter.mlp_readers]
        down = _linear(block, adapter, adapter.down)
        d = readers[0].in_features
        inter = down.in_features
        bad = [r for r in readers + mlp_readers if r.in_features != d] + [w for w in (o, down) if w.out_features != d]
        bad += [r for r in mlp_readers if r.out_features != inter]
        if bad:
            raise ValueError(f"block {i}: inconsistent linear shapes for DISP (d={d}, I={inter}); "
                             "expected readers [*, d], writers [d, *] and MLP readers [I, d]")
        shapes.append(BlockShapes(
            d=d, inter=inter,
            attn_reader_out=sum(r.out_features for r in readers),
            attn_reader_bias=sum(_nbias(r) for r in readers),
            o_in=o.in_features, o_bias=o.bias is not None,
            mlp_readers=len(mlp_readers),
            mlp_reader_bias=sum(1 for r in mlp_readers if r.bias is not None),
            down_bias=down.bias is not None,
        ))
    return shapes


def mask_sizes(shapes: Sequence[BlockShapes]) -> list[dict[str, int]]:
    """Length of each mask per block: ``d`` for the residual masks, ``I`` for ``mlp_mid``."""
    return [{"attn_in": s.d, "attn_out": s.d, "mlp_in": s.d, "mlp_mid": s.inter, "mlp_out": s.d} for s in shapes]


def full_masks(shapes: Sequence[BlockShapes], device: torch.device | str | None = None,
               dtype: torch.dtype = torch.float32) -> list[BlockMasks]:
    """All-ones (keep everything) masks."""
    return [BlockMasks(**{k: torch.ones(n, device=device, dtype=dtype) for k, n in sz.items()})
            for sz in mask_sizes(shapes)]


def check_masks(shapes: Sequence[BlockShapes], masks: Sequence[BlockMasks]) -> None:
    """ValueError unless there is one :class:`BlockMasks` per block with the right lengths."""
    if len(masks) != len(shapes):
        raise ValueError(f"got masks for {len(masks)} blocks, the model has {len(shapes)}")
    for i, (sz, bm) in enumerate(zip(mask_sizes(shapes), masks)):
        for k, m in bm.items():
            if m.dim() != 1 or m.numel() != sz[k]:
                raise ValueError(f"block {i}: mask {k} has shape {tuple(m.shape)}, expected [{sz[k]}]")


# ----- counting -----------------------------------------------------------------------------
def block_kept_params(s: BlockShapes, m: BlockMasks) -> torch.Tensor:
    """Differentiable kept attention + MLP parameters of one block (exact for hard masks).

    attn = Σattn_in·(q_out+k_out+v_out) + (q/k/v biases) + o_in·Σattn_out (+ Σattn_out for o's bias)
    mlp  = n_readers·Σmlp_in·Σmlp_mid (+ Σmlp_mid per reader bias) + Σmlp_mid·Σmlp_out (+ Σmlp_out for down's bias)
    """
    a_in, a_out, f_in, f_mid, f_out = (m.attn_in.sum(), m.attn_out.sum(), m.mlp_in.sum(),
                                       m.mlp_mid.sum(), m.mlp_out.sum())
    attn = a_in * s.attn_reader_out + s.attn_reader_bias + a_out * (s.o_in + (1 if s.o_bias else 0))
    mlp = (f_in * s.mlp_readers + s.mlp_reader_bias) * f_mid + f_mid * f_out + (f_out if s.down_bias else 0)
    return attn + mlp


def kept_params(shapes: Sequence[BlockShapes], masks: Sequence[BlockMasks]) -> torch.Tensor:
    """Differentiable count (0-dim float tensor) of the kept attention + MLP parameters of all blocks.

    Exact (an integer value) for hard masks: it equals the attention + MLP parameters of the
    model :func:`slimformer.methods.disp.export.export_disp` produces from the same masks.
    """
    check_masks(shapes, masks)
    return sum((block_kept_params(s, m) for s, m in zip(shapes, masks)), torch.zeros(()))


def prunable_params(shapes: Sequence[BlockShapes]) -> int:
    """Attention + MLP parameters of the dense model (the denominator of the kept fraction ``r``)."""
    return sum(s.full_params() for s in shapes)


def total_params(model: nn.Module) -> int:
    """All (unique) parameters of ``model``; tied embeddings/head count once."""
    return count_params(model)


def params_after(model: nn.Module, shapes: Sequence[BlockShapes], masks: Sequence[BlockMasks]) -> int:
    """Exact total parameter count of the model after exporting with hard ``masks``.

    Everything outside attention + MLP (embeddings, norms, head, Qwen3's q/k norms) keeps its size.
    """
    return total_params(model) - prunable_params(shapes) + int(round(float(kept_params(shapes, masks))))


def kept_fraction_target(model: nn.Module, shapes: Sequence[BlockShapes], target_params: float) -> float:
    """Kept fraction ``p`` of the attention + MLP parameters that removes ``target_params`` of *all* parameters.

    Raises ValueError when the budget cannot be met by pruning attention + MLP alone.
    """
    total, prunable = total_params(model), prunable_params(shapes)
    p = 1.0 - float(target_params) * total / prunable
    if not p > 0.0:
        raise ValueError(
            f"target_params={target_params} removes {target_params * total:.0f} of {total} parameters, but "
            f"attention + MLP hold only {prunable} ({prunable / total:.1%}); DISP cannot prune embeddings, "
            f"norms or the head - choose target_params < {prunable / total:.3f}")
    return p


# ----- applying masks to the unchanged HF model -------------------------------------------
class MaskHooks:
    """Context manager: forward hooks on the unchanged HF model that apply ``self.masks``.

    ``masks`` is read at every forward, so it can be replaced between forwards (``None``
    disables masking); gradients flow into the mask tensors. Hooks are removed on exit.

    Example::

        with MaskHooks(model, adapter) as hooks:
            hooks.masks = masks            # list[BlockMasks], one per block
            loss = model(ids, labels=ids).loss
    """

    def __init__(self, model: nn.Module, adapter: ArchAdapter, masks: list[BlockMasks] | None = None) -> None:
        self.model = model
        self.adapter = adapter
        self.masks: list[BlockMasks] | None = masks
        self.n_layers = len(adapter.get_layers(model))
        self._handles: list[Any] = []

    # hooks -----------------------------------------------------------------------------
    def _mask(self, layer: int, kind: str, like: torch.Tensor) -> torch.Tensor | None:
        if self.masks is None:
            return None
        if len(self.masks) != self.n_layers:
            raise ValueError(f"MaskHooks: {len(self.masks)} BlockMasks for {self.n_layers} blocks")
        m = getattr(self.masks[layer], kind)
        if m.shape[-1] != like.shape[-1]:
            raise ValueError(f"block {layer}: mask {kind} has {m.shape[-1]} entries, activation width is "
                             f"{like.shape[-1]}")
        return m.to(device=like.device, dtype=like.dtype)

    def _pre(self, layer: int, kind: str):
        def hook(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
            m = self._mask(layer, kind, args[0])
            return None if m is None else (args[0] * m, *args[1:])
        return hook

    def _post(self, layer: int, kind: str):
        def hook(module: nn.Module, args: tuple[Any, ...], out: torch.Tensor) -> torch.Tensor | None:
            m = self._mask(layer, kind, out)
            return None if m is None else out * m
        return hook

    def attach(self) -> "MaskHooks":
        """Register the hooks (idempotent)."""
        if self._handles:
            return self
        a = self.adapter
        for i, block in enumerate(a.get_layers(self.model)):
            for p in a.attn_readers:
                self._handles.append(a.get(block, p).register_forward_pre_hook(self._pre(i, "attn_in")))
            for p in a.mlp_readers:
                self._handles.append(a.get(block, p).register_forward_pre_hook(self._pre(i, "mlp_in")))
            down = a.get(block, a.down)
            self._handles.append(down.register_forward_pre_hook(self._pre(i, "mlp_mid")))
            self._handles.append(down.register_forward_hook(self._post(i, "mlp_out")))
            self._handles.append(a.get(block, a.o).register_forward_hook(self._post(i, "attn_out")))
        return self

    def remove(self) -> None:
        """Remove the hooks."""
        for h in self._handles:
            h.remove()
        self._handles = []

    def __enter__(self) -> "MaskHooks":
        return self.attach()

    def __exit__(self, *exc: Any) -> None:
        self.remove()


__all__ = [
    "MASK_KINDS", "BlockMasks", "BlockShapes", "MaskHooks", "block_kept_params", "block_shapes", "check_masks",
    "full_masks", "kept_fraction_target", "kept_params", "mask_sizes", "params_after", "prunable_params",
    "total_params",
]
