"""The prune pass: layer-at-a-time pruning driven by the Gram matrices of each block's writers.

Each sublayer runs **once** per calibration batch (as the rotate-and-slice pass of
:mod:`slimformer.calib.rotate_pass`), and the MLP sees the *already pruned* attention.
For block ``i`` (inputs cached from the already pruned blocks ``< i``), sequential blocks:

    a   = Attn(norm_a(x))      pre-hook on o: A = o's input [b, t, n_heads * v_hd],
                               G_o += A^T A (float64); A is cached
    -> attention decision (prunes v/o, may refit o); returns the kept o columns S
    h   = x + post(o'(A[..., S]))  the pruned attention's output, from the cache (``post``: the
                               family's output norm / multiplier, SlimBlock.attn_out)
    m   = MLP(norm_m(h))       pre-hook on down: G_down += H^T H, H = [b, t, I]
    -> MLP decision (prunes gate/up/down, may refit down)
    out = h + MLP'(norm_m(h))  the pruned MLP (kept channels only) -> next block

Parallel blocks (Phi-2) read one ``n = norm(x)``: both Grams come from one forward,
then ``out = x + o'(A[..., S]) + MLP'(n)``. Grams are all-reduced under
torch.distributed (:class:`slimformer.calib.stats.Covariance`). Block submodules
are called through a :class:`~slimformer.runtime.modeling_slimformer.SlimBlock` view of
the Hugging Face block (same modules, the runtime's sublayer code).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable, Protocol

import torch
from torch import nn
from tqdm.auto import tqdm

from ..arch import ArchAdapter, get_module
from ..runtime.modeling_slimformer import SlimBlock
from .runner import BlockInputs
from .source import BlockSource, blocks_or_memory
from .stats import Covariance

logger = logging.getLogger("slimformer.calib.prune_pass")


@dataclass
class WriterGrams:
    """Float64 Gram matrices ``X^T X`` of the inputs of a block's two writers.

    ``o``: ``[n_heads * v_hd, n_heads * v_hd]``; ``down``: ``[I, I]`` (gathered after
    the attention step); ``tokens``: rows of X.
    """

    o: torch.Tensor | None
    down: torch.Tensor | None
    tokens: int = 0


class LayerPruner(Protocol):
    """Per-block decisions, called in order: attention first, then the MLP."""

    def attention(self, layer: int, block: nn.Module, gram: torch.Tensor | None) -> torch.Tensor | None:
        """Prune the attention of ``block`` given ``G_o: [n_heads * v_hd]^2`` (``None``
        without data); return the kept o input columns in their new order, or ``None`` if unchanged."""

    def mlp(self, layer: int, block: nn.Module, gram: torch.Tensor | None, unit: int = 0) -> None:
        """Prune the MLP of ``block`` given ``G_down: [I, I]`` (``None`` without data); in a MoE block,
        called once per expert ``unit`` (:meth:`slimformer.arch.ArchAdapter.mlp_units`)."""


def gram_capture_hook(acc: Covariance, store: list[Any] | None, put: Callable[[torch.Tensor], Any]) -> Callable[..., None]:
    """Forward pre-hook: add the module input to ``acc``; with ``store``, also keep ``put(input)``."""

    def hook(_module: nn.Module, args: tuple[Any, ...]) -> None:
        acc.update(args[0])
        if store is not None:
            store.append(put(args[0]))

    return hook


def block_view(block: nn.Module, adapter: ArchAdapter, config: Any) -> SlimBlock:
    """A SlimBlock sharing ``block``'s submodules (for calling attention / MLP separately)."""
    modules = {name: get_module(block, name) for name in adapter.block_module_names()}
    return SlimBlock(adapter.block_layout(config), modules)


def _unit_gram(acc: Covariance) -> torch.Tensor:
    """An expert's Gram; one that no calibration token reached is scored as if its inputs were
    isotropic (identity Gram: weight-norm scores, restoration = plain column selection)."""
    if acc.count > 0:
        return acc.value()
    n = acc.value().shape[0]
    return torch.eye(n, dtype=torch.float64)


def _o_out(o: nn.Linear, a: torch.Tensor, cols: torch.Tensor | None) -> torch.Tensor:
    """Pruned o applied to cached input ``a: [b, t, n_heads * v_hd]`` (kept columns ``cols``)."""
    if cols is not None:
        a = a.index_select(-1, cols.to(a.device))
    return nn.functional.linear(a, o.weight, o.bias)


#: a single per-block callback ``step(layer, block, grams)`` run after both Grams are known
StepFn = Callable[[int, nn.Module, "WriterGrams | None"], None]


class _StepPruner:
    """Adapts a :data:`StepFn` to :class:`LayerPruner`: the attention is left unchanged and
    ``step`` runs at the MLP decision with both Grams (the MLP Gram is exact for this block
    because its attention did not change)."""

    def __init__(self, step: StepFn) -> None:
        self.step = step
        self.o_gram: torch.Tensor | None = None
        self.tokens = 0

    def attention(self, layer: int, block: nn.Module, gram: torch.Tensor | None) -> None:
        self.o_gram = gram
        return None

    def mlp(self, layer: int, block: nn.Module, gram: torch.Tensor | None) -> None:
        grams = None if gram is None else WriterGrams(self.o_gram, gram, self.tokens)
        self.step(layer, block, grams)


class _GramPrunePass:
    """The per-block steps of :func:`prune_layerwise` with calibration data: gather the writers'
    Grams one sublayer at a time, let the pruner decide, feed the pruned outputs on."""

    def __init__(self, model: nn.Module, adapter: ArchAdapter, inputs: BlockInputs, device: torch.device,
                 gram_dtype: torch.dtype) -> None:
        self.model, self.adapter, self.inputs, self.device = model, adapter, inputs, device
        self.gram_dtype = gram_dtype

    def sequential(self, li: int, block: nn.Module, pruner: LayerPruner) -> None:
        ad, inp, dev = self.adapter, self.inputs, self.device
        view = block_view(block, ad, self.model.config)
        o, down = get_module(block, ad.o), get_module(block, ad.down)
        acc_o, cache = Covariance(o.in_features, self.gram_dtype), []
        handle = o.register_forward_pre_hook(gram_capture_hook(acc_o, cache, inp.put))
        try:
            for x, kw in zip(inp.hidden, inp.kwargs):
                view._attn(view.attn_in(x.to(dev)), kw)
        finally:
            handle.remove()
        acc_o.all_reduce()
        cols = pruner.attention(li, block, acc_o.value())
        o = get_module(block, ad.o)
        mids = []
        for b, x in enumerate(inp.hidden):
            mids.append(inp.put(x.to(dev) + view.attn_out(_o_out(o, cache[b].to(dev), cols))))  # [b, t, d_mid]
            cache[b] = None  # type: ignore[call-overload]
            inp.hidden[b] = None  # type: ignore[assignment]
        downs = [get_module(block, u.down) for u in ad.mlp_units(block)]  # one MLP, or every expert
        accs = [Covariance(dn.in_features, self.gram_dtype) for dn in downs]
        handles = [dn.register_forward_pre_hook(gram_capture_hook(acc, None, inp.put)) for dn, acc in zip(downs, accs)]
        try:
            for h in mids:
                view._mlp(view.mlp_in(h.to(dev)))
        finally:
            for handle in handles:
                handle.remove()
        for acc in accs:
            acc.all_reduce()
        if hasattr(pruner, "tokens"):
            pruner.tokens = accs[0].count
        if ad.experts is None:
            pruner.mlp(li, block, accs[0].value())
        else:
            for u, acc in enumerate(accs):
                pruner.mlp(li, block, _unit_gram(acc), u)
        for b, h in enumerate(mids):
            h = h.to(dev)
            inp.hidden[b] = inp.put(h + view.mlp_branch(h))  # [b, t, d_out]

    def parallel(self, li: int, block: nn.Module, pruner: LayerPruner) -> None:
        ad, inp, dev = self.adapter, self.inputs, self.device
        view = block_view(block, ad, self.model.config)
        o, down = get_module(block, ad.o), get_module(block, ad.down)
        acc_o, acc_d = Covariance(o.in_features, self.gram_dtype), Covariance(down.in_features, self.gram_dtype)
        cache: list[torch.Tensor] = []
        handles = [o.register_forward_pre_hook(gram_capture_hook(acc_o, cache, inp.put)),
                   down.register_forward_pre_hook(gram_capture_hook(acc_d, None, inp.put))]
        try:
            for x, kw in zip(inp.hidden, inp.kwargs):
                x = x.to(dev)
                view._attn(view.attn_in(x), kw)
                view._mlp(view.mlp_in(x))
        finally:
            for h in handles:
                h.remove()
        acc_o.all_reduce()
        acc_d.all_reduce()
        if hasattr(pruner, "tokens"):
            pruner.tokens = acc_d.count
        cols = pruner.attention(li, block, acc_o.value())
        pruner.mlp(li, block, acc_d.value())
        o = get_module(block, ad.o)
        for b, x in enumerate(inp.hidden):
            x = x.to(dev)
            out = x + view.attn_out(_o_out(o, cache[b].to(dev), cols)) + view.mlp_branch(x)
            cache[b] = None  # type: ignore[call-overload]
            inp.hidden[b] = inp.put(out)


@torch.no_grad()
def prune_layerwise(
    model: nn.Module,
    adapter: ArchAdapter,
    inputs: BlockInputs | None,
    pruner: LayerPruner | StepFn,
    device: torch.device,
    progress: bool = True,
    gram_dtype: torch.dtype = torch.float64,
    *,
    blocks: BlockSource | None = None,
) -> None:
    """Let ``pruner`` prune every block in order, on ``device``.

    ``gram_dtype``: dtype of each batch's ``X^T X`` (the sum is float64 either way).

    ``pruner`` is a :class:`LayerPruner`, or a :data:`StepFn` for methods that only
    change the MLP (called with both Grams of the block).

    With ``inputs`` (block 0's cached inputs, consumed) the writers' Grams are
    gathered with one forward per sublayer and the pruned block's outputs feed the
    next block; with ``inputs=None`` no forward runs (weight-only criteria) and
    the pruner gets ``None`` Grams. ``blocks``: where the decoder blocks come from
    (default: in memory); each is written back once pruned.
    """
    if not hasattr(pruner, "attention"):
        pruner = _StepPruner(pruner)  # type: ignore[arg-type]
    blocks = blocks_or_memory(blocks, model, adapter)
    run = _GramPrunePass(model, adapter, inputs, device, gram_dtype) if inputs is not None else None
    for li in tqdm(range(blocks.n_layers), desc="prune", unit="layer", disable=not progress):
        with blocks.block(li, device) as block:
            if run is None:
                pruner.attention(li, block, None)
                if adapter.experts is None:
                    pruner.mlp(li, block, None)
                else:
                    for u in range(len(adapter.mlp_units(block))):
                        pruner.mlp(li, block, None, u)
            elif adapter.parallel:
                run.parallel(li, block, pruner)
            else:
                run.sequential(li, block, pruner)
        logger.debug("layer %d pruned", li)
