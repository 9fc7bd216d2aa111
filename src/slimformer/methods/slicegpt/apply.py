"""SliceGPT: at every residual point, rotate to the principal components of the
calibration activations and keep the top ``k`` (§3.3 of the paper).

Departures from the official code, all on purpose:
* RMSNorm models are not mean-centred (the official ``fuse_modules`` centres the
  embeddings of every model, which changes a Llama's function);
* each sublayer runs once per calibration batch (see
  :mod:`slimformer.calib.rotate_pass`);
* with the head unsliced, the last block keeps the original basis (identity
  instead of a PCA rotation): the function is the same, and the head keeps the
  original weights times the folded final-norm scale.

Two deployable variants (issue #21):

* ``keep_tied``: on a tied model the default unties the head and keeps it ``[V, d_L]``
  (slicing can then *add* parameters); keep-tied re-ties it to the rotated, sliced
  embedding ``E Q0`` and carries the final norm's scale between the embedding basis and the
  last basis in ``M = Q0^T diag(g) QL: [d0, dL]``
  (:func:`slimformer.core.fuse.tie_head_through_projection`). RMSNorm families only:
  LayerNorm models centre their embeddings, and ``E diag(g) n`` then differs from
  ``E_centred diag(g) n`` by a rank-one term a tied head cannot hold.
* ``basis="shared"``: one basis ``Q: [d, d']`` for every residual point
  (:func:`shared_basis`), so no shortcut matrices remain and the model is converted back
  into the base Hugging Face class with ``hidden_size = d'``
  (:func:`slimformer.core.fuse.to_plain_rmsnorm_model`): it saves with a plain config.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

import torch
from torch import nn

from ...arch import ArchAdapter, get_module
from ...calib.rotate_pass import Point, normalized_stream_covariance
from ...calib.runner import capture_block_inputs
from ...calib.stats import pca_basis
from ...core.fuse import is_slim, norm_scale, tie_head_through_projection, to_plain_rmsnorm_model
from ...core.params import ResidualWidths, count_checked, is_tied, shared_basis_keeps_tie
from ...core.rotate import rotate_model
from .._shared.residual import plan_residual_widths, slice_residual_stream
from ..base import Runtime
from .config import SliceGPTConfig

logger = logging.getLogger("slimformer.methods.slicegpt")


class PCAChooser:
    """Basis = top-``k`` eigenvectors of the (damped) covariance at each point.

    ``width_of`` maps a :class:`Point` to its kept width (e.g.
    :meth:`slimformer.core.params.ResidualWidths.of`). Records the fraction of the
    (undamped) energy kept per point, and the bases at the embedding (``embed_basis``)
    and at the head (``head_basis``; ``None`` = identity) for keep-tied SliceGPT.
    """

    def __init__(self, d: int, width_of: Callable[[Point], int], damping: float, slice_head: bool) -> None:
        self.d = d
        self.width_of = width_of
        self.damping = damping
        self.slice_head = slice_head
        self.kept_energy: dict[str, float] = {}
        self.embed_basis: torch.Tensor | None = None  # [d, d0]
        self.head_basis: torch.Tensor | None = None  # [d, dL]

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
        basis = Q[:, :k].clone()
        if point.kind == "embed":
            self.embed_basis = basis
        if point.last:
            self.head_basis = basis
        return basis


def apply_slicegpt(
    model: nn.Module, adapter: ArchAdapter, config: SliceGPTConfig, calib_ids: torch.Tensor, runtime: Runtime
) -> dict[str, Any]:
    """Plan widths with the config's schedule, then fuse norms, rotate and slice (in place).

    See :func:`slimformer.methods._shared.residual.slice_residual_stream`; the basis at each point is the top PCA
    directions (:class:`PCAChooser`). Returns its report fields plus
    ``kept_energy`` per residual point. ``config.basis == "shared"`` runs :func:`shared_basis`;
    ``config.keep_tied`` re-ties a tied head (module docstring).
    """
    if config.basis == "shared":
        return shared_basis(model, adapter, config, calib_ids, runtime)
    d = model.config.hidden_size

    def make_chooser(widths: ResidualWidths) -> PCAChooser:
        return PCAChooser(d, widths.of, config.damping, config.slice_head)

    keep_tied = bool(config.keep_tied) and is_tied(model, adapter) and not is_slim(model, adapter)
    finish = None
    if config.keep_tied and not keep_tied:
        logger.warning("keep_tied: the LM head of this model is not tied to its embedding; nothing to keep (no-op)")
    if keep_tied:
        if adapter.norm_kind != "rms":
            raise ValueError(f"keep_tied supports RMSNorm families (llama, mistral, qwen2, qwen3), not {adapter.name}: "
                             "its centred embeddings cannot serve as the head exactly; use keep_tied=False")
        g = norm_scale(get_module(model, adapter.final_norm), adapter.norm_offset).cpu().clone()  # [d]
        tied_keys = getattr(model, "_tied_weights_keys", None)

        def finish(chooser: Any) -> None:
            tie_head_through_projection(model, adapter, chooser.embed_basis, chooser.head_basis, g, tied_keys)

    report, chooser = slice_residual_stream(model, adapter, config, calib_ids, runtime, make_chooser,
                                            keep_tied=keep_tied, finish=finish)
    report["kept_energy"] = chooser.kept_energy  # type: ignore[attr-defined]
    if config.keep_tied:
        report["keep_tied"] = keep_tied  # False: the model had no tied head (no-op)
    return report


def shared_basis(
    model: nn.Module, adapter: ArchAdapter, config: SliceGPTConfig, calib_ids: torch.Tensor, runtime: Runtime
) -> dict[str, Any]:
    """Shared-basis SliceGPT: one basis ``Q: [d, d']`` for the whole residual stream (in place).

    Why this basis: with one ``Q`` at every point, the error a reader sees is the part of
    its normalised input outside ``span(Q)``; the total over all points,
    ``sum_p E|n_p - n_p Q Q^T|^2``, is minimised by the top-``d'`` eigenvectors of
    ``C = sum_p E[n_p n_p^T]`` (Ky Fan), with ``n_p`` what point ``p``'s norm hands its
    readers (:func:`slimformer.calib.rotate_pass.normalized_stream_covariance`). Summing the
    *normalised* covariances weighs every point equally; summing raw ones would let the
    last blocks, whose residual norm is largest, choose the basis alone. No point is
    calibrated on an already sliced upstream (the basis must be known before the first
    slice), so one forward pass of the dense model gives all statistics.

    Then every point uses ``Q`` (no shortcut matrices), and the model is converted into
    the base architecture with ``hidden_size = d'``
    (:func:`slimformer.core.fuse.to_plain_rmsnorm_model`). Report fields: those of
    :func:`slice_residual_stream` plus ``basis``, ``kept_energy`` (``{"all": fraction of the
    summed normalised energy in span(Q)}``), ``tied_head`` and ``plain_export`` (True:
    the model saves with a plain Hugging Face config).
    """
    if adapter.norm_kind != "rms" or adapter.parallel:
        raise ValueError(f"basis='shared' needs a sequential RMSNorm family (llama, mistral, qwen2, qwen3), not "
                         f"{adapter.name}: use basis='per-layer' (default SliceGPT) for it")
    blocks = runtime.block_source(model, adapter)
    if blocks.offloaded:
        raise ValueError("basis='shared' rebuilds the model as a plain architecture and cannot run offloaded; "
                         "load the model in memory (drop --offload)")
    if is_slim(model, adapter):
        raise ValueError("basis='shared' needs the original (unfused) model")
    d = model.config.hidden_size
    layer_cls = type(adapter.get_layers(model)[0])
    tie = shared_basis_keeps_tie(model, adapter)
    g0 = float(norm_scale(get_module(model, adapter.final_norm), adapter.norm_offset).reshape(-1)[0]) if tie else 1.0
    tied_keys = getattr(model, "_tied_weights_keys", None)
    schedule = config.make_schedule()
    plan = plan_residual_widths(model, adapter, config, schedule, None, shared_basis=True)
    k = plan.widths.embed
    logger.info("SliceGPT (shared basis): d=%d -> %d everywhere (slicing %.4f)", d, k, plan.sparsity)
    blocks.fuse_norms()
    inputs = capture_block_inputs(model, adapter, calib_ids, runtime.batch_size, runtime.device,
                                  runtime.offload_activations, blocks=blocks)
    cov = normalized_stream_covariance(model, adapter, inputs, runtime.device, runtime.progress, blocks=blocks)
    total = float(torch.trace(cov))
    ridge = config.damping * total / d
    vals, Q = pca_basis(cov, config.damping, overwrite=True)
    energy = float((vals[:k].sum() - k * ridge) / total) if k < d else 1.0
    Qk = Q[:, :k].to(torch.float32).contiguous()  # [d, k]
    n = len(adapter.get_layers(model))
    rotate_model(model, adapter, Qk, [(Qk, Qk)] * n)
    to_plain_rmsnorm_model(model, adapter, layer_cls, tie=tie, g0=g0, tied_keys=tied_keys)
    report = plan.report()
    after = count_checked(model, plan.params_after, logger)
    if after != plan.params_after and "target_params" in report:
        report["target_params"]["achieved"] = 1.0 - after / plan.params_before
    report.update(kept_width=k, basis="shared", kept_energy={"all": round(energy, 6)}, tied_head=tie,
                  plain_export=True)
    return report


__all__ = ["PCAChooser", "apply_slicegpt", "shared_basis", "slice_residual_stream"]
