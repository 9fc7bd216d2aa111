"""DOTResize: merge the neurons of the residual stream by discrete optimal transport.

At every point of the residual stream (block inputs, mid-block, block outputs;
the points SliceGPT rotates), the ``n`` neurons are merged into ``k`` by a
transport plan computed from calibration activations, and the plan's
orthonormal factor becomes the point's basis (:mod:`slimformer.methods.dotresize.ot`
has the maths). Everything else -- norm fusion, one forward per sublayer,
shortcuts between points of different widths, per-layer schedules and the
exact-parameter bisection of ``target_params`` -- is SliceGPT's machinery
(:func:`slimformer.methods._shared.residual.slice_residual_stream`), so the two
methods compare at exactly the same shapes and parameter counts.

Choices where the paper's method section could not be read (METHODS.md marks
them unverified), all recorded here and in the config:

* targets: the ``k`` neurons with the largest activation norm (summaries of the
  paper: "highest mean activations"); ``spread`` and ``random`` are options;
* cost: l2 distance of the neurons' activation vectors over all calibration
  tokens, divided by its maximum; computed from the streamed second moment, so
  no token subsampling is needed (``sqeuclidean`` and ``correlation``, one minus
  the uncentred correlation, are options);
* marginals: uniform source and (default) uniform target weights, every neuron
  transported (``transport="mass-preserving"``: kept neurons stay on themselves,
  only the dropped ones move); entropic regularisation 10 times the largest cost
  (0.01 for ``where="mlp"``; the choices on held-out calibration windows are in
  config.py), own log-domain Sinkhorn (torch);
* merge map ``T = P diag(1/b)`` (averaging weights), ``T = QR``; ``Q`` is the
  basis in the stream, ``R`` is folded into the next readers together with the
  pseudo-inverse ``T^+`` (Fig. 1's "T inv"), where it cancels exactly -- so the
  compressed model depends only on ``span(T)``;
* the last block's output keeps the original basis unless ``slice_head``
  (head at full width, as SliceGPT's default).

``where="mlp"`` merges the MLP intermediate channels of each block instead (no
norm in between, so no QR is needed): the same transport step on the second
moment of the MLP writer's input gives the merge map ``T: [I, k]``; the readers
(gate/up, fc1) get ``T^T W`` (a merged channel reads the averaged pre-activations
of its sources) and the writer ``W_down (T^+)^T`` (for a hard assignment: the sum of
the sources' output columns). Blocks are processed in order on the outputs of the
already merged blocks, and the kept counts (``sparsity`` or ``target_params`` by
bisection on the exact count) come from the structured-pruning planner
(:func:`slimformer.methods._shared.pruning.plan_counts`, MLP only), so the result has
exactly the shapes of FASP / magnitude pruning with ``attention="none"``.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

import torch
from torch import nn

from ...arch import ArchAdapter
from ...calib.prune_pass import WriterGrams, prune_layerwise
from ...calib.rotate_pass import Point
from ...calib.runner import capture_block_inputs
from ...calib.scores import block_scores
from ...core.fuse import is_slim
from ...core.params import ResidualWidths
from ...core.shrink import merge_mlp_channels
from .._shared.pruning import plan_counts
from .._shared.pruning_config import PruningConfig
from .._shared.residual import slice_residual_stream
from ..base import Runtime
from .config import DOTResizeConfig
from .ot import MergeBasis, dot_basis, select_targets, self_weights

logger = logging.getLogger("slimformer.methods.dotresize")


def _point_name(point: Point) -> str:
    return f"{point.kind}{'' if point.layer < 0 else point.layer}"


class TransportChooser:
    """Basis at each residual point = orthonormal factor of the DOT merge map.

    ``width_of`` maps a :class:`Point` to its kept width. Records per point the
    fraction of the activation energy the basis keeps (``trace(Q^T C Q) / trace(C)``,
    comparable with SliceGPT's ``kept_energy``) and the transport diagnostics.
    """

    def __init__(self, width_of: Callable[[Point], int], config: DOTResizeConfig) -> None:
        self.width_of = width_of
        self.config = config
        self.kept_energy: dict[str, float] = {}
        self.transport: dict[str, dict[str, float]] = {}

    def needs_covariance(self, point: Point) -> bool:
        return not (point.last and not self.config.slice_head)

    def choose(self, point: Point, cov: torch.Tensor | None) -> torch.Tensor | None:
        """``Q: [d, k]`` (float64, orthonormal columns), or ``None`` for the unsliced head input."""
        if not self.needs_covariance(point):
            return None
        assert cov is not None
        cfg = self.config
        name = _point_name(point)
        C = cov.double()
        if cfg.prune_only:  # baseline: the target neurons themselves, the others dropped
            J = select_targets(C, self.width_of(point), cfg.targets, cfg.target_seed)
            Q = torch.eye(C.shape[0], dtype=torch.float64, device=C.device)[:, J.to(C.device)]
            self.kept_energy[name] = round(float(torch.trace(Q.T @ C @ Q) / torch.trace(C)), 6)
            return Q
        basis = dot_basis(
            cov, self.width_of(point), reg=cfg.entropic_reg, cost=cfg.cost, targets=cfg.targets,
            marginal=cfg.target_marginal, max_iter=cfg.sinkhorn_iters, tol=cfg.sinkhorn_tol,
            seed=cfg.target_seed, transport=cfg.transport,
        )
        Q = basis.Q
        self.kept_energy[name] = round(float(torch.trace(Q.T @ C @ Q) / torch.trace(C)), 6)
        self.transport[name] = transport_diagnostics(basis)
        t = basis.transport
        if t.iterations >= cfg.sinkhorn_iters - 1 and t.marginal_error > cfg.sinkhorn_tol:
            logger.warning(
                "%s: Sinkhorn stopped after %d iterations with marginal error %.2e > tol %.1e "
                "(raise sinkhorn_iters or entropic_reg)", name, t.iterations, t.marginal_error, cfg.sinkhorn_tol,
            )
        return Q


def transport_diagnostics(basis: MergeBasis) -> dict[str, float]:
    """Sinkhorn ``iterations``, ``marginal_error``, ``cost`` and ``min_self_weight``
    (smallest ``T[J_j, j]``: how much of its own merged neuron a kept neuron is at least)."""
    t = basis.transport
    return {"iterations": t.iterations, "marginal_error": t.marginal_error, "cost": round(t.cost, 6),
            "min_self_weight": round(float(self_weights(basis.T, basis.targets).min()), 6)}


def apply_dotresize(
    model: nn.Module, adapter: ArchAdapter, config: DOTResizeConfig, calib_ids: torch.Tensor, runtime: Runtime
) -> dict[str, Any]:
    """Plan widths, fuse norms, and merge the residual stream by optimal transport (in place).

    Returns SliceGPT's width/schedule report fields (see
    :func:`~slimformer.methods._shared.residual.slice_residual_stream`) plus
    ``kept_energy`` and ``transport`` (Sinkhorn iterations, marginal error and
    cost) per residual point.
    """

    if config.where == "mlp":
        return merge_mlp(model, adapter, config, calib_ids, runtime)

    def make_chooser(widths: ResidualWidths) -> TransportChooser:
        return TransportChooser(widths.of, config)

    report, chooser = slice_residual_stream(
        model, adapter, config.widths_config(), calib_ids, runtime, make_chooser, label="DOTResize"
    )
    assert isinstance(chooser, TransportChooser)
    report["kept_energy"] = chooser.kept_energy
    report["transport"] = chooser.transport
    return report


def merge_mlp(
    model: nn.Module, adapter: ArchAdapter, config: DOTResizeConfig, calib_ids: torch.Tensor, runtime: Runtime
) -> dict[str, Any]:
    """``where="mlp"``: merge each block's MLP channels by optimal transport (in place).

    Returns ``schedule``, ``sparsity``, ``layer_sparsity``, ``kept`` (MLP channels per
    block), ``target_params`` (when given), ``kept_energy`` (energy of the MLP
    activations in ``span(T)``) and ``transport`` per block.
    """
    if is_slim(model, adapter):
        raise ValueError("dotresize where='mlp' needs the original Hugging Face model; this one was already "
                         "rotated/sliced")
    blocks = runtime.block_source(model, adapter)
    schedule = config.widths_config().make_schedule()
    bi = None
    if schedule.needs_scores:
        bi = block_scores(model, adapter, calib_ids, runtime.batch_size, runtime.device,
                          runtime.offload_activations, runtime.progress, blocks=blocks).bi
    counts_config = PruningConfig(sparsity=config.sparsity, target_params=config.target_params, attention="none",
                                  schedule=config.schedule, round_to=config.round_to or 1)
    plan = plan_counts(model, adapter, counts_config, schedule, bi)
    inputs = capture_block_inputs(model, adapter, calib_ids, runtime.batch_size, runtime.device,
                                  runtime.offload_activations, blocks=blocks)
    kept_energy: dict[str, float] = {}
    transport: dict[str, dict[str, float]] = {}

    def step(li: int, block: nn.Module, grams: WriterGrams | None) -> None:
        assert grams is not None
        C = grams.down.double()  # [I, I] second moment of the MLP activations
        k = plan.counts[li].mlp
        name = f"mlp{li}"
        if k >= C.shape[0]:  # nothing merged away: the channels stay as they are (exact; no transport
            kept_energy[name] = 1.0  # plan, whose smoothing would mix channels through the activation)
            return
        if config.prune_only:  # baseline: keep the targets' channels unchanged, drop the others
            J = select_targets(C, k, config.targets, config.target_seed)
            T = torch.eye(C.shape[0], dtype=torch.float64, device=C.device)[:, J.to(C.device)]
            Q = T
        else:
            basis = dot_basis(
                C, k, reg=config.entropic_reg, cost=config.cost, targets=config.targets,
                marginal=config.target_marginal, max_iter=config.sinkhorn_iters, tol=config.sinkhorn_tol,
                seed=config.target_seed, transport=config.transport,
            )
            T, Q = basis.T, basis.Q
            transport[name] = transport_diagnostics(basis)
        kept_energy[name] = round(float(torch.trace(Q.T @ C @ Q) / torch.trace(C)), 6)
        merge_mlp_channels(block, adapter, T)

    prune_layerwise(model, adapter, inputs, step, runtime.device, runtime.progress, blocks=blocks)
    report: dict[str, Any] = {"where": "mlp",
                              **plan.report_fields(model, schedule.name, config.target_params, logger)}
    report.update(kept=[{"mlp": c.mlp} for c in plan.counts], kept_energy=kept_energy, transport=transport)
    return report
