"""DISP-LLM end to end: train the hypernetwork, make its masks exact, slice the model."""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from ...arch import ArchAdapter
from ...core.params import count_checked
from ..base import Runtime
from .config import DISPConfig
from .masks import BlockMasks, block_shapes, kept_params, prunable_params, total_params
from .train import exact_masks, train_hypernet

logger = logging.getLogger("slimformer.methods.disp")

HYPERNET_FILE = "disp_hypernet.safetensors"


def learn_masks(model: nn.Module, adapter: ArchAdapter, config: DISPConfig, calib_ids: torch.Tensor,
                runtime: Runtime) -> tuple[list[BlockMasks], dict[str, Any]]:
    """Train the hypernetwork on the frozen ``model`` and return exact hard masks + report fields.

    ``model`` is unchanged (it runs on ``runtime.device`` during training and is moved back).
    """
    home = next(model.parameters()).device
    model.to(runtime.device)
    try:
        res = train_hypernet(model, adapter, config, calib_ids, runtime.device, runtime.progress)
        exact = exact_masks(model, adapter, res.hypernet, config.target_params)
    finally:
        model.to(home)
    shapes = block_shapes(model, adapter)
    total, full = total_params(model), prunable_params(shapes)
    last = res.history[-20:]
    report: dict[str, Any] = {
        "steps": res.steps,
        "resumed_from": res.resumed_from,
        "train_seconds": round(res.seconds, 3),
        "final_lm_loss": (sum(h[0] for h in last) / len(last)) if last else None,
        "final_r": res.history[-1][2] if res.history else None,
        "p": res.p,
        "loss_curve": [round(h[0], 4) for h in res.history[:: max(1, len(res.history) // 50)]],
        "r_curve": [round(h[2], 4) for h in res.history[:: max(1, len(res.history) // 50)]],
        "target_params": {"requested": config.target_params, "achieved": exact.removed},
        "budget_adjustment": {"logit_offset": exact.offset, "removed_before_offset": exact.removed_before,
                              "kept_fraction_before_offset": 1.0 - exact.removed_before * total / full},
        "kept_widths": [m.widths() for m in exact.masks],
    }
    from safetensors.torch import save

    weights = save({k: v.detach().cpu().contiguous() for k, v in res.hypernet.state_dict().items()})
    report["_artifacts"] = {HYPERNET_FILE: weights}
    return [m.to("cpu") for m in exact.masks], report


def apply_disp(model: nn.Module, adapter: ArchAdapter, config: DISPConfig, calib_ids: torch.Tensor,
               runtime: Runtime) -> dict[str, Any]:
    """DISP-LLM, in place: learn per-block channel masks, then export gather/scatter slices.

    Report fields: ``steps``, ``train_seconds``, ``final_lm_loss`` (mean of the last 20 steps),
    ``final_r`` / ``p`` (kept fraction of attention + MLP parameters at the last step / target),
    ``target_params`` (requested, achieved), ``budget_adjustment`` (global logit offset and the
    fraction before it), ``kept_widths`` (per block, kept channels of each mask).
    """
    from .export import export_disp  # the physical slicing (gather/scatter runtime)

    masks, report = learn_masks(model, adapter, config, calib_ids, runtime)
    shapes = block_shapes(model, adapter)
    predicted = total_params(model) - prunable_params(shapes) + int(round(float(kept_params(shapes, masks))))
    export_disp(model, adapter, masks)
    count_checked(model, predicted, logger)  # exact by construction; a mismatch is logged
    report["params_predicted"] = predicted
    return report
