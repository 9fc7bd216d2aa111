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
from typing import Any

import torch
from torch import nn

from ...arch import ArchAdapter
from ...calib.residual import Point, rotate_and_slice
from ...calib.runner import capture_block_inputs
from ...calib.stats import pca_basis
from ...core.fuse import fuse
from ..base import Runtime
from .config import SliceGPTConfig

logger = logging.getLogger("slimformer.methods.slicegpt")


class PCAChooser:
    """Basis = top-``k`` eigenvectors of the (damped) covariance at each point.

    ``widths`` maps a point to its kept width; the default is the same ``k``
    everywhere. Records the fraction of the (undamped) energy kept per point.
    """

    def __init__(self, d: int, width_of: "callable", damping: float, slice_head: bool) -> None:
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
        _, Q = pca_basis(cov, self.damping)
        Qk = Q[:, :k]
        energy = float(torch.trace(Qk.T @ cov @ Qk) / torch.trace(cov)) if k < self.d else 1.0
        self.kept_energy[f"{point.kind}{'' if point.layer < 0 else point.layer}"] = round(energy, 6)
        return Qk


def apply_slicegpt(
    model: nn.Module, adapter: ArchAdapter, config: SliceGPTConfig, calib_ids: torch.Tensor, runtime: Runtime
) -> dict[str, Any]:
    """Fuse norms, then rotate and slice every residual point with PCA (in place)."""
    d = model.config.hidden_size
    k = config.kept_width(d)
    logger.info("SliceGPT: d=%d -> %d (sparsity %.3f)", d, k, config.sparsity)
    fuse(model, adapter)
    inputs = capture_block_inputs(
        model, adapter, calib_ids, runtime.batch_size, runtime.device, runtime.offload_activations
    )
    chooser = PCAChooser(d, lambda p: k, config.damping, config.slice_head)
    rotate_and_slice(model, adapter, inputs, chooser, runtime.device, runtime.progress)
    return {"kept_width": k, "kept_energy": chooser.kept_energy}
