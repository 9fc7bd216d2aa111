"""Configuration of SliceGPT (and its non-uniform variants: layer-redundancy, global).

The width/schedule fields and their validation are shared with DOTResize
(:class:`slimformer.methods._shared.widths.ResidualWidthsConfig`); SliceGPT adds the PCA ridge
and two deployable variants (``keep_tied``, ``basis="shared"``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .._shared.widths import DEFAULT_BASE_RATIO, UNIFORM_ROUND_TO, ResidualWidthsConfig
from ...validate import check_bool

#: values of :attr:`SliceGPTConfig.basis`
BASIS_NAMES = ("per-layer", "shared")


@dataclass
class SliceGPTConfig(ResidualWidthsConfig):
    """SliceGPT settings, with the published defaults.

    Give exactly one of ``sparsity`` or ``target_params``.

    The width and schedule fields (``sparsity``, ``target_params``, ``round_to``,
    ``slice_head``, ``schedule``, ``slicing_base``, ``temperature``,
    ``max_layer_sparsity``) are documented on
    :class:`~slimformer.methods._shared.widths.ResidualWidthsConfig`.

    Attributes:
        damping: relative ridge added to each covariance before the
            eigendecomposition, ``damping * mean(diag C)`` (official code: 0.01).
        keep_tied: keep a tied LM head tied to the (rotated, sliced) input embedding
            instead of untying it at full width: a small head-input matrix
            ``M = Q0^T diag(g) QL`` (embedding width x head width) runs after the final norm.
            RMSNorm families only; a no-op (logged) on a model whose head is not tied.
        basis: ``per-layer`` (SliceGPT: one PCA basis per residual point, shortcut
            matrices between them) or ``shared`` (one basis for the whole residual stream,
            the same width everywhere: no shortcut matrices, and the result is a plain
            Hugging Face model of hidden size ``d'`` that saves without remote code;
            uniform schedule with slice_head only, RMSNorm families only).
    """

    damping: float = 0.01
    keep_tied: bool = False
    basis: str = field(default="per-layer", metadata={"choices": BASIS_NAMES})

    method = "slicegpt"

    def __post_init__(self) -> None:
        super().__post_init__()
        if not float(self.damping) >= 0:
            raise ValueError(f"damping must be >= 0, got {self.damping!r}")
        check_bool("keep_tied", self.keep_tied)
        if self.basis not in BASIS_NAMES:
            raise ValueError(f"basis must be one of {', '.join(BASIS_NAMES)}, got {self.basis!r}")
        if self.basis == "shared":
            if self.schedule != "uniform":
                raise ValueError(f"basis 'shared' keeps one width everywhere: it needs schedule 'uniform', "
                                 f"not {self.schedule!r}")
            if not self.slice_head:
                raise ValueError("basis 'shared' slices the head input too (one width everywhere): "
                                 "pass slice_head=True (--slice-head)")
            if self.keep_tied:
                raise ValueError("basis 'shared' decides the head itself (tied when the final norm allows it): "
                                 "drop keep_tied")

    def touches(self) -> frozenset[str]:
        """What this method changes (see :meth:`slimformer.arch.ArchAdapter.refusal`): the residual stream."""
        return frozenset({"residual"})


__all__ = ["BASIS_NAMES", "DEFAULT_BASE_RATIO", "SliceGPTConfig", "UNIFORM_ROUND_TO"]
