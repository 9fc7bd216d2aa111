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
from ...calib.residual import Point
from ...calib.stats import pca_basis
from ...core.params import ResidualWidths
from .._shared.residual import slice_residual_stream
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


def apply_slicegpt(
    model: nn.Module, adapter: ArchAdapter, config: SliceGPTConfig, calib_ids: torch.Tensor, runtime: Runtime
) -> dict[str, Any]:
    """Plan widths with the config's schedule, then fuse norms, rotate and slice (in place).

    See :func:`slimformer.methods._shared.residual.slice_residual_stream`; the basis at each point is the top PCA
    directions (:class:`PCAChooser`). Returns its report fields plus
    ``kept_energy`` per residual point.
    """
    d = model.config.hidden_size

    def make_chooser(widths: ResidualWidths) -> PCAChooser:
        return PCAChooser(d, widths.of, config.damping, config.slice_head)

    report, chooser = slice_residual_stream(model, adapter, config, calib_ids, runtime, make_chooser)
    report["kept_energy"] = chooser.kept_energy  # type: ignore[attr-defined]
    return report


__all__ = ["PCAChooser", "apply_slicegpt", "slice_residual_stream"]
