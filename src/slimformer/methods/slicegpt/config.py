"""Configuration of SliceGPT (and its non-uniform variants: layer-redundancy, global).

The width/schedule fields and their validation are shared with DOTResize
(:class:`slimformer.methods._shared.widths.ResidualWidthsConfig`); SliceGPT adds the PCA ridge.
"""

from __future__ import annotations

from dataclasses import dataclass

from .._shared.widths import DEFAULT_BASE_RATIO, UNIFORM_ROUND_TO, ResidualWidthsConfig


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
    """

    damping: float = 0.01

    method = "slicegpt"

    def __post_init__(self) -> None:
        super().__post_init__()
        if not float(self.damping) >= 0:
            raise ValueError(f"damping must be >= 0, got {self.damping!r}")


__all__ = ["DEFAULT_BASE_RATIO", "SliceGPTConfig", "UNIFORM_ROUND_TO"]
