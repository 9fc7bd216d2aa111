"""SliceGPT: at every residual point, rotate to the principal components of the
calibration activations and keep the top ``k`` (§3.3 of the paper).

Departures from the official code, all on purpose:
* RMSNorm models are not mean-centred (the official ``fuse_modules`` centres the
  embeddings of every model, which changes a Llama's function);
* each sublayer runs once per calibration batch (see
  :mod:`slimformer.calib.residual`);
* with the head unsliced, the last block keeps the original basis (identity
  instead of a PCA rotation): the function is the same, and the head keeps the
  original weights times the folded final-norm scale.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

import torch
from torch import nn

from ...arch import ArchAdapter
from ...calib.residual import BasisChooser, Point, rotate_and_slice
from ...calib.runner import capture_block_inputs
from ...calib.scores import LayerScores, block_scores
from ...calib.stats import pca_basis
from ...calib.offload import fuse_model
from ...core.params import ResidualWidths
from ...schedule import plan_schedule
from ..base import Runtime
from .config import SliceGPTConfig

logger = logging.getLogger("slimformer.methods.slicegpt")


class PCAChooser:
    """Basis = top-``k`` eigenvectors of the (damped) covariance at each point.

    ``width_of`` maps a :class:`Point` to its kept width (e.g.
    :meth:`slimformer.core.params.ResidualWidths.of`). Records the fraction of the
    (undamped) energy kept per point.
    """

    def __init__(self, d: int, width_of: Callable[[Point], int], damping: float, slice_head: bool) -> None:
        self.d = d
        self.width_of = width_of
        self.damping = damping
        self.slice_head = slice_head
        self.kept_energy: dict[str, float] = {}

    def needs_covariance(self, point: Point) -> bool:
        return not (point.last and not self.slice_head)

    def choose(self, point: Point, cov: torch.Tensor | None) -> torch.Tensor | None:
        if point.last and not self.slice_head:
            return None
        assert cov is not None
        k = self.width_of(point)
        total = float(torch.trace(cov))
        ridge = self.damping * total / self.d
        # cov is not needed afterwards: damp it in place (one [d, d] float64 matrix less at peak)
        vals, Q = pca_basis(cov, self.damping, overwrite=True)
        # damping shifts every eigenvalue by the ridge and keeps the eigenvectors, so the
        # undamped energy in span(Q_k) is sum(top-k eigenvalues) - k * ridge
        energy = float((vals[:k].sum() - k * ridge) / total) if k < self.d else 1.0
        self.kept_energy[f"{point.kind}{'' if point.layer < 0 else point.layer}"] = round(energy, 6)
        return Q[:, :k].clone()


def slice_residual_stream(
    model: nn.Module,
    adapter: ArchAdapter,
    widths_config: SliceGPTConfig,
    calib_ids: torch.Tensor,
    runtime: Runtime,
    make_chooser: Callable[[ResidualWidths], BasisChooser],
    label: str = "SliceGPT",
) -> tuple[dict[str, Any], BasisChooser]:
    """Plan residual widths, then fuse norms and rotate/slice with the chooser's bases (in place).

    Shared by every method that picks one basis per residual point (SliceGPT,
    DOTResize): only the :class:`~slimformer.calib.residual.BasisChooser` differs.

    Steps: (1) if the schedule needs them, per-block BI/cosine scores from one
    forward pass over ``calib_ids`` on the dense model; (2) per-point widths from
    ``widths_config.sparsity`` or, by bisection on the exact parameter count,
    ``widths_config.target_params`` (:func:`slimformer.schedule.plan_schedule`);
    (3) fusion and one rotate-and-slice pass with ``make_chooser(widths)``.

    Returns ``(report fields, chooser)``: ``schedule``, ``sparsity`` (mean slicing
    used), ``layer_sparsity``, ``widths`` (per residual point), ``scores`` (when
    computed), ``target_params`` ``{"requested", "achieved"}``, ``kept_width``
    (uniform only).
    """
    d = model.config.hidden_size
    schedule = widths_config.make_schedule()
    scores: LayerScores | None = None
    if schedule.needs_scores:
        scores = block_scores(
            model, adapter, calib_ids, runtime.batch_size, runtime.device,
            runtime.offload_activations, runtime.progress,
        )
    plan = plan_schedule(
        model, adapter, schedule, scores.bi if scores is not None else None,
        sparsity=widths_config.sparsity, target_params=widths_config.target_params,
        round_to=widths_config.resolved_round_to(), slice_head=widths_config.slice_head,
    )
    widths = plan.widths
    logger.info(
        "%s (%s): d=%d, mean slicing %.4f, layer widths %s",
        label, plan.schedule, d, plan.sparsity, list(plan.layer_widths),
    )
    fuse_model(model, adapter)  # offloaded models fuse each block as it is loaded
    inputs = capture_block_inputs(
        model, adapter, calib_ids, runtime.batch_size, runtime.device, runtime.offload_activations
    )
    chooser = make_chooser(widths)
    rotate_and_slice(model, adapter, inputs, chooser, runtime.device, runtime.progress)
    report = plan.report()
    after = sum(p.numel() for p in model.parameters())
    if after != plan.params_after:  # the count is exact by construction; never silently misreport
        logger.warning("predicted %d parameters, the compressed model has %d", plan.params_after, after)
        if "target_params" in report:
            report["target_params"]["achieved"] = 1.0 - after / plan.params_before
    if plan.schedule == "uniform":
        report["kept_width"] = widths.embed
    if scores is not None:
        report["scores"] = scores.to_dict()
    return report, chooser


def apply_slicegpt(
    model: nn.Module, adapter: ArchAdapter, config: SliceGPTConfig, calib_ids: torch.Tensor, runtime: Runtime
) -> dict[str, Any]:
    """Plan widths with the config's schedule, then fuse norms, rotate and slice (in place).

    See :func:`slice_residual_stream`; the basis at each point is the top PCA
    directions (:class:`PCAChooser`). Returns its report fields plus
    ``kept_energy`` per residual point.
    """
    d = model.config.hidden_size

    def make_chooser(widths: ResidualWidths) -> PCAChooser:
        return PCAChooser(d, widths.of, config.damping, config.slice_head)

    report, chooser = slice_residual_stream(model, adapter, config, calib_ids, runtime, make_chooser)
    report["kept_energy"] = chooser.kept_energy  # type: ignore[attr-defined]
    return report
