"""Width/schedule settings of the residual-slicing methods (SliceGPT, DOTResize): torch-free."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ...validate import DEFAULT_BASE_RATIO, SCHEDULE_NAMES, check_budget, check_fraction, check_int, check_schedule

if TYPE_CHECKING:
    from ...schedule import Schedule

#: ``round_to`` when none is given: SliceGPT's multiple of 8 for the uniform schedule
#: driven by ``sparsity``; single dimensions otherwise (see :meth:`SliceGPTConfig.resolved_round_to`).
UNIFORM_ROUND_TO = 8


@dataclass
class ResidualWidthsConfig:
    """How much of the residual stream to slice, and how to spread it over layers.

    Give exactly one of ``sparsity`` or ``target_params``. The published SliceGPT defaults;
    :class:`slimformer.methods.slicegpt.SliceGPTConfig` adds its PCA ridge, DOTResize
    builds one of these from its own fields (same planning rules for both).

    Attributes:
        sparsity: mean fraction of the embedding dimension ``d`` to delete, in
            [0, 1) (the paper's "slicing"; it removes fewer *parameters* than this).
        round_to: widths are multiples of this. ``None`` (default): 8 for the
            uniform schedule given a ``sparsity`` (official ``--round-interval 8``,
            kept width rounded *down*); 1 for the layer-redundancy and global
            schedules (reference code: ``round((1 - FS_i) d)``) and whenever
            ``target_params`` is given (a parameter count needs single-dimension
            steps; pass 8 for hardware-friendly shapes on large models).
        slice_head: also slice the last block's output / the head input
            (official default: False, head stays at full width).
        schedule: how the slicing is spread over layers: ``uniform`` (SliceGPT),
            ``layer-redundancy`` (Dumitru et al. 2024) or ``global`` (MoDeGPT's
            softmax allocation). See :mod:`slimformer.schedule`.
        slicing_base: layer-redundancy ``SB``, the slicing of the most important
            layer, in [0, sparsity]; ``None`` = ``0.5 * sparsity``.
        temperature: ``global`` softmax temperature on the BI scale (> 0).
        max_layer_sparsity: ``global`` cap on any layer's slicing, in (0, 1).
        target_params: fraction of the model's *parameters* to remove, in (0, 1):
            the mean slicing is found by bisection on the exact parameter count
            (untied head and shortcut matrices included).
    """

    sparsity: float | None = None
    round_to: int | None = None
    slice_head: bool = False
    schedule: str = field(default="uniform", metadata={"choices": SCHEDULE_NAMES})
    slicing_base: float | None = None
    temperature: float = 0.15
    max_layer_sparsity: float = 0.8
    target_params: float | None = None

    method = ""

    def __post_init__(self) -> None:
        self.sparsity, self.target_params = check_budget(
            self.method or "residual slicing", self.sparsity, self.target_params, "fraction of the width d")
        if self.round_to is not None:
            self.round_to = check_int("round_to", self.round_to, 1)
        check_schedule(self.schedule)
        if self.slicing_base is not None:
            if self.schedule != "layer-redundancy":
                raise ValueError(f"slicing_base only applies to schedule 'layer-redundancy', not {self.schedule!r}")
            self.slicing_base = check_fraction("slicing_base", self.slicing_base)
            if self.sparsity is not None and self.slicing_base > self.sparsity:
                raise ValueError(
                    f"slicing_base {self.slicing_base} must not exceed sparsity {self.sparsity} "
                    "(the most important layer cannot be sliced more than the mean)"
                )
        if self.schedule == "global":  # the settings make_schedule() passes on (torch-free check)
            check_schedule(self.schedule, temperature=self.temperature, max_layer_sparsity=self.max_layer_sparsity)
        if self.schedule == "global" and self.sparsity is not None and self.sparsity > self.max_layer_sparsity:
            raise ValueError(f"sparsity {self.sparsity} exceeds max_layer_sparsity {self.max_layer_sparsity}")

    def make_schedule(self) -> Schedule:
        """The :class:`slimformer.schedule.Schedule` these settings describe."""
        from ...schedule import make_schedule

        if self.schedule == "layer-redundancy":
            return make_schedule(self.schedule, slicing_base=self.slicing_base)
        if self.schedule == "global":
            return make_schedule(self.schedule, temperature=self.temperature,
                                 max_layer_sparsity=self.max_layer_sparsity)
        return make_schedule(self.schedule)

    def resolved_round_to(self) -> int:
        """``round_to`` if given, else 8 for uniform+sparsity and 1 otherwise (see class docs)."""
        if self.round_to is not None:
            return int(self.round_to)
        return UNIFORM_ROUND_TO if self.schedule == "uniform" and self.target_params is None else 1

    def kept_width(self, d: int) -> int:
        """Uniform schedule: width kept at every sliced point, ``int((1 - s) d)`` rounded down."""
        if self.sparsity is None or self.schedule != "uniform":
            raise ValueError("kept_width is defined for the uniform schedule with a given sparsity")
        r = self.resolved_round_to()
        k = int((1.0 - self.sparsity) * d)
        k -= k % r
        if k < 1:
            raise ValueError(
                f"sparsity {self.sparsity} leaves no dimension of d={d} after rounding to a multiple "
                f"of {r}; use a smaller sparsity or round_to"
            )
        return k


__all__ = ["DEFAULT_BASE_RATIO", "ResidualWidthsConfig", "UNIFORM_ROUND_TO"]
