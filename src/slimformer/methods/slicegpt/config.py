"""Configuration of SliceGPT."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class SliceGPTConfig:
    """SliceGPT settings, with the published defaults.

    Attributes:
        sparsity: fraction of the embedding dimension ``d`` to delete, in [0, 1)
            (the paper's "slicing"; it removes fewer *parameters* than this).
        round_to: the kept width ``int((1 - sparsity) * d)`` is rounded down to a
            multiple of this (official code: ``--round-interval 8``).
        damping: relative ridge added to each covariance before the
            eigendecomposition, ``damping * mean(diag C)`` (official code: 0.01).
        slice_head: also slice the last block's output / the head input
            (official default: False, head stays at full width).
    """

    sparsity: float
    round_to: int = 8
    damping: float = 0.01
    slice_head: bool = False

    method = "slicegpt"

    def __post_init__(self) -> None:
        if not isinstance(self.sparsity, (int, float)) or not 0.0 <= float(self.sparsity) < 1.0:
            raise ValueError(f"sparsity must be in [0, 1), got {self.sparsity!r}")
        if int(self.round_to) < 1:
            raise ValueError(f"round_to must be >= 1, got {self.round_to!r}")
        if float(self.damping) < 0:
            raise ValueError(f"damping must be >= 0, got {self.damping!r}")
        self.sparsity = float(self.sparsity)

    def kept_width(self, d: int) -> int:
        """Width kept at every sliced point: ``int((1 - s) d)`` rounded down to ``round_to``."""
        k = int((1.0 - self.sparsity) * d)
        k -= k % int(self.round_to)
        if k < 1:
            raise ValueError(
                f"sparsity {self.sparsity} leaves no dimension of d={d} after rounding to a multiple "
                f"of {self.round_to}; use a smaller sparsity or round_to"
            )
        return k
