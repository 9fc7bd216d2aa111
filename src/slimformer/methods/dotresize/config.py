"""Configuration of DOTResize (Verma, Murray, Duh, arXiv 2507.04517)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from ...validate import COSTS, SCHEDULE_NAMES, TARGET_INITS, TARGET_MARGINALS, check_budget, check_int
from .._shared.widths import ResidualWidthsConfig

#: entropic regularisation when none is given, per ``where``, relative to the largest cost
#: (costs are divided by their maximum). The paper's value could not be read (METHODS.md).
#: Sweeps on stories260k (docs/dotresize.md): the residual stream wants smooth plans (0.01
#: and the exact plan were far worse, 0.05-1.0 a plateau; 0.1 is its lower end), the MLP
#: channels sharp ones (0.1 smears unrelated channels together; 0.01 was best).
DEFAULT_ENTROPIC_REG = {"residual": 0.1, "mlp": 0.01}

#: where the neurons are merged: the residual stream (hidden width, SliceGPT's points) or
#: the MLP intermediate channels (see apply.py). Both at once is not implemented.
WHERE = ("residual", "mlp")


@dataclass
class DOTResizeConfig:
    """DOTResize settings. Give exactly one of ``sparsity`` or ``target_params``.

    Widths (shared with SliceGPT, validated by :class:`ResidualWidthsConfig`, planned by
    :func:`slimformer.schedule.plan_schedule`):

    Attributes:
        sparsity: mean fraction of the residual width ``d`` merged away, in [0, 1)
            (SliceGPT's sense; far fewer *parameters* go).
        target_params: fraction of the model's parameters to remove, in (0, 1):
            the width is found by bisection on the exact parameter count.
        round_to: widths are multiples of this (``None``: 8 for a uniform
            ``sparsity``, 1 otherwise, as for SliceGPT).
        slice_head: also merge the last block's output / the head input.
        schedule, slicing_base, temperature, max_layer_sparsity: per-layer
            allocation, as for SliceGPT (``uniform``, ``layer-redundancy``, ``global``).

    Transport (see :mod:`slimformer.methods.dotresize.ot`):

    Attributes:
        entropic_reg: Sinkhorn regularisation relative to the largest cost, >= 0;
            0 solves the exact (unregularised) problem with a network simplex.
            ``None``: 0.1 for ``where="residual"``, 0.01 for ``"mlp"``.
        cost: activation distance between neurons: ``l2`` or ``sqeuclidean``.
        sinkhorn_iters: maximum Sinkhorn iterations (>= 1).
        sinkhorn_tol: stop when the marginal violation is below this (> 0).
        targets: how the ``k`` target neurons are chosen: ``norm`` (largest
            activation norm), ``spread`` (greedy farthest point) or ``random``.
        target_marginal: ``uniform`` (every target absorbs ``n/k`` sources) or
            ``nearest`` (each target's share of sources nearest to it).
        target_seed: seed of ``targets=random``.
        where: ``residual`` (the hidden width, through RMSNorm via QR) or ``mlp``
            (the MLP intermediate channels of every block; then ``sparsity`` is the
            fraction of channels merged away, ``round_to`` defaults to 1, the model
            keeps its Hugging Face block structure and ``slice_head`` does not apply).
        prune_only: ablation / baseline: keep the ``k`` target neurons and drop the
            others without merging them (the width pruning DOTResize is compared with).
    """

    sparsity: float | None = None
    target_params: float | None = None
    round_to: int | None = None
    slice_head: bool = False
    schedule: str = field(default="uniform", metadata={"choices": SCHEDULE_NAMES})
    slicing_base: float | None = None
    temperature: float = 0.15
    max_layer_sparsity: float = 0.8
    entropic_reg: float | None = None
    cost: str = field(default="l2", metadata={"choices": COSTS})
    sinkhorn_iters: int = 1000
    sinkhorn_tol: float = 1e-9
    targets: str = field(default="norm", metadata={"choices": TARGET_INITS})
    target_marginal: str = field(default="uniform", metadata={"choices": TARGET_MARGINALS})
    target_seed: int = 0
    where: str = field(default="residual", metadata={"choices": WHERE})
    prune_only: bool = False

    method = "dotresize"

    def __post_init__(self) -> None:
        check_budget(self.method, self.sparsity, self.target_params, "fraction of the width d")
        widths = self.widths_config()  # validates the width/schedule fields
        self.sparsity, self.target_params, self.round_to = widths.sparsity, widths.target_params, widths.round_to
        if self.where not in WHERE:
            raise ValueError(
                f"where={self.where!r} is not supported; available: {', '.join(WHERE)} "
                "(merging both at once is not implemented)"
            )
        reg = DEFAULT_ENTROPIC_REG[self.where] if self.entropic_reg is None else self.entropic_reg
        if isinstance(reg, bool) or not isinstance(reg, (int, float)) or not math.isfinite(reg) or reg < 0:
            raise ValueError(f"entropic_reg must be a finite number >= 0 (0 = exact transport), got {reg!r}")
        self.entropic_reg = float(reg)
        if self.cost not in COSTS:
            raise ValueError(f"unknown cost {self.cost!r}; available: {', '.join(COSTS)}")
        if self.targets not in TARGET_INITS:
            raise ValueError(f"unknown targets {self.targets!r}; available: {', '.join(TARGET_INITS)}")
        if self.target_marginal not in TARGET_MARGINALS:
            raise ValueError(
                f"unknown target_marginal {self.target_marginal!r}; available: {', '.join(TARGET_MARGINALS)}"
            )
        self.sinkhorn_iters = check_int("sinkhorn_iters", self.sinkhorn_iters, 1)
        if not (isinstance(self.sinkhorn_tol, (int, float)) and self.sinkhorn_tol > 0):
            raise ValueError(f"sinkhorn_tol must be > 0, got {self.sinkhorn_tol!r}")
        self.target_seed = check_int("target_seed", self.target_seed)
        if self.where == "mlp" and self.slice_head:
            raise ValueError("slice_head applies to where='residual' only")

    def widths_config(self) -> ResidualWidthsConfig:
        """The width/schedule part as a :class:`ResidualWidthsConfig` (SliceGPT's planning rules)."""
        return ResidualWidthsConfig(
            sparsity=self.sparsity, target_params=self.target_params, round_to=self.round_to,
            slice_head=self.slice_head, schedule=self.schedule, slicing_base=self.slicing_base,
            temperature=self.temperature, max_layer_sparsity=self.max_layer_sparsity,
        )


__all__ = ["DEFAULT_ENTROPIC_REG", "DOTResizeConfig", "WHERE"]
