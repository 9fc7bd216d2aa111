"""The residual-slicing pipeline of SliceGPT and DOTResize: plan widths, fuse norms, then one
rotate-and-slice pass with a method's :class:`~slimformer.calib.rotate_pass.BasisChooser`."""

from __future__ import annotations

import logging
from typing import Any, Callable

import torch
from torch import nn

from ...arch import ArchAdapter, UnsupportedModelError
from ...calib.rotate_pass import BasisChooser, rotate_and_slice
from ...calib.runner import capture_block_inputs
from ...calib.scores import LayerScores, block_scores
from ...core.params import ResidualWidths, count_checked
from ...schedule import Schedule, SchedulePlan, plan_schedule
from ..base import Runtime
from .widths import ResidualWidthsConfig

logger = logging.getLogger("slimformer.methods.residual")


def plan_residual_widths(
    model: nn.Module,
    adapter: ArchAdapter,
    widths_config: ResidualWidthsConfig,
    schedule: Schedule,
    scores: Any = None,
    **variant: bool,
) -> SchedulePlan:
    """Per-point widths from ``widths_config`` (:func:`slimformer.schedule.plan_schedule`).

    ``variant``: ``keep_tied`` / ``shared_basis`` flags of
    :func:`slimformer.core.params.compressed_param_count`; when one is set the budget search
    counts that variant's head and shortcuts exactly (same search, same rounding rules).
    """
    return plan_schedule(model, adapter, schedule, scores, sparsity=widths_config.sparsity,
                         target_params=widths_config.target_params, round_to=widths_config.resolved_round_to(),
                         slice_head=widths_config.slice_head, **variant)


def slice_residual_stream(
    model: nn.Module,
    adapter: ArchAdapter,
    widths_config: ResidualWidthsConfig,
    calib_ids: torch.Tensor,
    runtime: Runtime,
    make_chooser: Callable[[ResidualWidths], BasisChooser],
    label: str = "SliceGPT",
    *,
    keep_tied: bool = False,
    finish: Callable[[BasisChooser], None] | None = None,
) -> tuple[dict[str, Any], BasisChooser]:
    """Plan residual widths, then fuse norms and rotate/slice with the chooser's bases (in place).

    Shared by every method that picks one basis per residual point (SliceGPT,
    DOTResize): only the :class:`~slimformer.calib.rotate_pass.BasisChooser` differs.

    Steps: (1) if the schedule needs them, per-block BI/cosine scores from one
    forward pass over ``calib_ids`` on the dense model; (2) per-point widths from
    ``widths_config.sparsity`` or, by bisection on the exact parameter count,
    ``widths_config.target_params`` (:func:`slimformer.schedule.plan_schedule`);
    (3) fusion and one rotate-and-slice pass with ``make_chooser(widths)``.

    Returns ``(report fields, chooser)``: ``schedule``, ``sparsity`` (mean slicing
    used), ``layer_sparsity``, ``widths`` (per residual point), ``scores`` (when
    computed), ``target_params`` ``{"requested", "achieved"}``, ``kept_width``
    (uniform only).

    ``keep_tied``: count the keep-tied head (:func:`slimformer.core.params.compressed_param_count`)
    when planning; ``finish(chooser)`` runs after the rotate-and-slice pass and before the
    parameter count is checked (keep-tied SliceGPT re-ties the head there).
    """
    d = model.config.hidden_size
    if adapter.same_width_ends and not (widths_config.schedule == "uniform" and widths_config.slice_head):
        raise UnsupportedModelError(
            f"{adapter.name}'s model reshapes its final hidden states to the embedding width, so the head must "
            "read the embedding's width: slice with --schedule uniform --slice-head")
    schedule = widths_config.make_schedule()
    blocks = runtime.block_source(model, adapter)
    scores: LayerScores | None = None
    if schedule.needs_scores:
        scores = block_scores(
            model, adapter, calib_ids, runtime.batch_size, runtime.device,
            runtime.offload_activations, runtime.progress, blocks=blocks,
        )
    plan = plan_residual_widths(model, adapter, widths_config, schedule, scores.bi if scores is not None else None,
                                keep_tied=keep_tied)
    widths = plan.widths
    warnings = _budget_warnings(model, widths_config, plan.params_before, plan.params_after, label, keep_tied)
    logger.info(
        "%s (%s): d=%d, mean slicing %.4f, layer widths %s",
        label, plan.schedule, d, plan.sparsity, list(plan.layer_widths),
    )
    blocks.fuse_norms()  # an offloaded source fuses each block as it is loaded
    inputs = capture_block_inputs(
        model, adapter, calib_ids, runtime.batch_size, runtime.device, runtime.offload_activations, blocks=blocks
    )
    chooser = make_chooser(widths)
    rotate_and_slice(model, adapter, inputs, chooser, runtime.device, runtime.progress, blocks=blocks)
    if finish is not None:
        finish(chooser)
    report = plan.report()
    after = count_checked(model, plan.params_after, logger)
    if after != plan.params_after:
        if "target_params" in report:
            report["target_params"]["achieved"] = 1.0 - after / plan.params_before
    if plan.schedule == "uniform":
        report["kept_width"] = widths.embed
    if warnings:
        report["warnings"] = warnings
    if scores is not None:
        report["scores"] = scores.to_dict()
    return report, chooser


def _budget_warnings(model: nn.Module, widths_config: ResidualWidthsConfig, before: int, after: int, label: str,
                     keep_tied: bool) -> list[str]:
    """A warning when a fixed ``sparsity`` (a fraction of the *width*) would add parameters: the
    tied head is untied at full width and shortcut matrices are added (logged and reported)."""
    if widths_config.target_params is not None or after <= before:
        return []
    tied = bool(getattr(model.config, "tie_word_embeddings", False)) and not keep_tied
    why = "the tied head becomes its own full-width matrix and shortcut matrices are added" if tied else \
        "shortcut matrices are added between blocks of different widths"
    text = (f"{label} at sparsity {widths_config.sparsity:g} (a fraction of the residual width) ADDS "
            f"{after - before:,} parameters (+{100 * (after - before) / before:.1f}%): {why}; pass --target-params F "
            "to remove a fraction F of the parameters (counted exactly)" + (" or --keep-tied" if tied else ""))
    logger.warning(text)
    return [text]


__all__ = ["plan_residual_widths", "slice_residual_stream"]
