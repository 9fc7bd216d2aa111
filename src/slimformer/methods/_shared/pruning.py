"""Structured pruning of interlinked structures with a pluggable scorer, optional restoration.

The pipeline of FASP, the baselines (magnitude, Wanda-SP, random) and PruneNet, which only
swap the :class:`Scorer` and the restore default; MoDeGPT and DOTResize (``where="mlp"``)
reuse :class:`PrunePlan` / :func:`plan_counts`:

1. per-layer fractions from the schedule (BI scores from one dense pass if needed);
   from ``sparsity``, or from ``target_params`` by bisection on the exact parameter
   count (:func:`slimformer.core.structures.pruned_param_count`);
2. layer by layer, sublayer by sublayer (:func:`slimformer.calib.prune_pass.prune_layerwise`,
   one forward per sublayer): the Gram of o's input, value-channel scores, top-k per
   kv head, restoration ``W' = W G[:, S] G[S, S]^{-1}`` of o, the rewrite
   (:func:`slimformer.core.structures.prune_block`); then the same for the MLP, whose
   Gram is gathered on the output of the *pruned* attention; the pruned block's
   outputs feed the next block.

The model keeps its Hugging Face block structure (no norm fusion, no rotation), so
MLP-only uniform pruning exports as a plain HF config.

Choices where the paper is silent (METHODS.md): damping 0.01 (relative ridge);
value channels are scored per kv head by summing the column scores of o over the
query heads it serves; every kv head of a layer keeps the same number of value
channels; the kept count is ``floor((1 - f) * n)`` for the uniform schedule and the
nearest integer otherwise (at least 1).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Protocol, Sequence

import torch
from torch import nn

from ...arch import ArchAdapter, get_module
from ...calib.prune_pass import prune_layerwise
from ...calib.runner import capture_block_inputs
from ...calib.scores import block_scores
from ...core.fuse import is_slim
from ...core.params import count_checked, count_params
from ...core.structures import (
    AttentionShape,
    BlockKeep,
    LayerCounts,
    attention_shape,
    kept_o_columns,
    prune_block,
    pruned_param_count,
    reconstruction_error,
    restore_columns,
    top_k,
)
from ...schedule import Schedule, make_schedule, solve_budget, width_from_fraction
from ..base import Runtime
from .pruning_config import PruningConfig

logger = logging.getLogger("slimformer.methods.pruning")


class Scorer(Protocol):
    """Scores of one block's groups (higher = keep), attention then MLP."""

    needs_activations: bool

    def attention(self, layer: int, block: nn.Module, adapter: ArchAdapter, shape: AttentionShape,
                  gram: torch.Tensor | None) -> torch.Tensor:
        """``[n_kv, v_hd]`` value channel scores (``gram``: ``G_o`` or ``None``)."""

    def mlp(self, layer: int, block: nn.Module, adapter: ArchAdapter, gram: torch.Tensor | None) -> torch.Tensor:
        """``[I]`` MLP channel scores (``gram``: ``G_down`` or ``None``)."""


@dataclass(frozen=True)
class PrunePlan:
    """Kept group counts per layer for one mean sparsity (duck-types the schedule's bisection).

    ``counts``: one entry per layer (:class:`LayerCounts` here; MoDeGPT's per-module counts there).
    """

    sparsity: float
    fractions: tuple[float, ...]
    counts: tuple[Any, ...]
    params_after: int
    params_before: int

    @property
    def removed_fraction(self) -> float:
        return 1.0 - self.params_after / self.params_before

    def report_fields(self, model: nn.Module, schedule: str, target_params: float | None,
                      log: logging.Logger) -> dict[str, Any]:
        """Report fields every plan-based method shares, read after the plan was applied to ``model``:
        ``schedule``, ``sparsity``, ``layer_sparsity`` and, with a target, ``target_params``
        ``{"requested", "achieved"}`` from the model's real count. The count is exact by
        construction; a mismatch is logged on ``log``, never misreported silently."""
        after = count_checked(model, self.params_after, log)
        fields: dict[str, Any] = {"schedule": schedule, "sparsity": self.sparsity,
                                  "layer_sparsity": [round(f, 6) for f in self.fractions]}
        if target_params is not None:
            fields["target_params"] = {"requested": target_params, "achieved": 1.0 - after / self.params_before}
        return fields


def layer_counts(block: nn.Module, adapter: ArchAdapter, config: Any, fraction: float, attention: str,
                 round_to: int, rounding: str) -> LayerCounts:
    """Groups of each kind a block keeps when a fraction ``fraction`` of them goes."""
    shape = attention_shape(block, adapter, config)
    width = get_module(block, adapter.down).in_features
    mlp = max(1, width_from_fraction(fraction, width, round_to, rounding))
    v = max(1, width_from_fraction(fraction, shape.v_head_dim, 1, rounding)) if attention == "channels" else None
    heads = max(1, width_from_fraction(fraction, shape.n_kv_heads, 1, rounding)) if attention == "heads" else None
    units = None
    if adapter.experts is not None:  # every expert (and the shared expert) keeps the same fraction
        units = tuple(max(1, width_from_fraction(fraction, get_module(block, u.down).in_features, round_to, rounding))
                      for u in adapter.mlp_units(block))
    return LayerCounts(mlp, v, heads, units)


def plan_counts(model: nn.Module, adapter: ArchAdapter, config: PruningConfig, schedule: Schedule,
                scores: Sequence[float] | None) -> PrunePlan:
    """Per-layer kept counts from ``config.sparsity`` or, by bisection, ``config.target_params``."""
    layers = adapter.get_layers(model)
    before = count_params(model)

    def build(sp: float) -> PrunePlan:
        fs = schedule.fractions(sp, len(layers), scores)
        counts = tuple(layer_counts(b, adapter, model.config, f, config.attention, config.round_to, schedule.rounding)
                       for b, f in zip(layers, fs))
        return PrunePlan(sp, tuple(fs), counts, pruned_param_count(model, adapter, counts), before)

    return solve_budget(build, sparsity=config.sparsity, target_params=config.target_params,
                        lo=schedule.min_sparsity(), label=config.method or "pruning")


def _select_attention(counts: LayerCounts, shape: AttentionShape, v_s: torch.Tensor) -> BlockKeep:
    keep = BlockKeep()
    if counts.v is not None and counts.v < shape.v_head_dim:
        keep.v = top_k(v_s, counts.v).cpu()
    if counts.heads is not None and counts.heads < shape.n_kv_heads:
        keep.heads = top_k(v_s.sum(-1), counts.heads).cpu()  # a head group's score: sum of its channels
    return keep


def _refit(W: torch.Tensor, G: torch.Tensor, keep: torch.Tensor, restore: bool,
           damping: float) -> tuple[torch.Tensor | None, float]:
    """Restored weight (or ``None``) and the relative output error on the calibration data."""
    new = restore_columns(W, G, keep, damping) if restore else W.index_select(1, keep.to(W.device))
    return (new if restore else None), reconstruction_error(W, new, G, keep)


class StructuredPruner:
    """The :class:`slimformer.calib.prune_pass.LayerPruner` of every structured pruning method."""

    def __init__(self, model: nn.Module, adapter: ArchAdapter, counts: Sequence[LayerCounts], scorer: Scorer,
                 restore: bool, damping: float) -> None:
        self.model, self.adapter, self.counts, self.scorer = model, adapter, counts, scorer
        self.restore, self.damping = restore, damping
        self.errors: list[dict[str, float]] = [{} for _ in counts]  # relative output error per writer

    def attention(self, layer: int, block: nn.Module, gram: torch.Tensor | None) -> torch.Tensor | None:
        ad = self.adapter
        shape = attention_shape(block, ad, self.model.config)
        keep = _select_attention(self.counts[layer], shape, self.scorer.attention(layer, block, ad, shape, gram))
        cols = kept_o_columns(shape, keep)
        if cols is None:
            return None
        if gram is not None:
            keep.o_weight, err = _refit(get_module(block, ad.o).weight, gram, cols, self.restore, self.damping)
            self.errors[layer]["attn"] = round(err, 6)
        prune_block(block, ad, self.model.config, keep)
        return cols

    def mlp(self, layer: int, block: nn.Module, gram: torch.Tensor | None, unit: int = 0) -> None:
        """Prune MLP ``unit`` of ``block`` (the MLP of a dense block; an expert of a MoE block)."""
        ad = self.adapter.mlp_units(block)[unit]
        down = get_module(block, ad.down)
        k = self.counts[layer].unit(unit)
        if k >= down.in_features:
            return
        keep = BlockKeep(mlp=top_k(self.scorer.mlp(layer, block, ad, gram), k).cpu())
        if gram is not None:
            keep.down_weight, err = _refit(down.weight, gram, keep.mlp, self.restore, self.damping)
            self.errors[layer]["mlp" if self.adapter.experts is None else f"mlp{unit}"] = round(err, 6)
        prune_block(block, ad, self.model.config, keep)


def prune_structured(model: nn.Module, adapter: ArchAdapter, config: PruningConfig, calib_ids: torch.Tensor | None,
                     runtime: Runtime, scorer: Scorer) -> dict[str, Any]:
    """Prune ``model`` in place with ``scorer``; restore if ``config.restores``. Returns report fields."""
    if is_slim(model, adapter):
        raise ValueError(f"{config.method}: the model's residual stream was already rotated/sliced; "
                         "structured pruning needs the original (dense or pruned) Hugging Face model")
    restore = config.restores
    needs_data = restore or scorer.needs_activations
    if needs_data and calib_ids is None:
        raise ValueError(f"{config.method} needs calibration data"
                         + (" for the restoration (or disable it)" if not scorer.needs_activations else ""))
    schedule = make_schedule(config.schedule)
    blocks = runtime.block_source(model, adapter)
    bi = None
    if schedule.needs_scores:
        if calib_ids is None:
            raise ValueError(f"schedule {config.schedule!r} needs calibration data (BI scores)")
        bi = block_scores(model, adapter, calib_ids, runtime.batch_size, runtime.device,
                          runtime.offload_activations, runtime.progress, blocks=blocks).bi
    plan = plan_counts(model, adapter, config, schedule, bi)
    inputs = None
    if needs_data:
        inputs = capture_block_inputs(model, adapter, calib_ids, runtime.batch_size, runtime.device,
                                      runtime.offload_activations, blocks=blocks)
    pruner = StructuredPruner(model, adapter, plan.counts, scorer, restore, config.damping)
    prune_layerwise(model, adapter, inputs, pruner, runtime.device, runtime.progress,
                    gram_dtype=getattr(torch, config.gram_dtype), blocks=blocks)
    report = plan.report_fields(model, schedule.name, config.target_params, logger)
    report["kept"] = [{k: v for k, v in vars(c).items() if v is not None} for c in plan.counts]
    report["restore"] = restore
    if inputs is not None:
        report["reconstruction_error"] = pruner.errors
    return report



__all__ = ["PrunePlan", "Scorer", "StructuredPruner", "layer_counts", "plan_counts", "prune_structured"]
