"""Configuration of DOTResize (Verma, Murray, Duh, arXiv 2507.04517)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from ...validate import (COSTS, SCHEDULE_NAMES, TARGET_INITS, TARGET_MARGINALS, TRANSPORTS, check_budget,
                         check_int)
from .._shared.widths import ResidualWidthsConfig

#: entropic regularisation when none is given, per ``where``, relative to the largest cost
#: (costs are divided by their maximum). The paper's value could not be read (METHODS.md).
#: Chosen on *held-out calibration windows* of stories260k (``benchmarks/dotresize.py
#: --heldout``, docs/dotresize.md "Reference, mass-preserving and correlation variants"):
#: the value with the lowest mean held-out log-perplexity at 10% and 20% of parameters
#: removed. Residual: the held-out perplexity falls as the plan gets smoother up to the top
#: of the grid (0.01 ... 10; 3 and 10 within 2% of each other, 0.1 -- the earlier default,
#: picked on the evaluation text -- 26% / 17% worse than 10); a one-off check on
#: opt-fixture's held-out WikiText-2 valid windows agreed (0.1: 267, 1: 219, 3: 216, 10: 214).
#: MLP: sharp plans (0.1 smears unrelated channels together). 0.03 beat 0.01 on the held-out
#: stories260k windows at both targets (2.6% / 12.5%), but opt-fixture's held-out windows
#: preferred 0.01 (by 2%), and at 0.03 the soft merge map ``T`` (used itself, not only its
#: span, for the MLP) is ill-conditioned at ``k = n``: the family grid's exactness at
#: sparsity 0 (1e-4) fails for phi, qwen2, stablelm and starcoder2 (up to 1e-2). So the MLP
#: default stays 0.01.
DEFAULT_ENTROPIC_REG = {"residual": 10.0, "mlp": 0.01}

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
            ``None``: 10 for ``where="residual"`` (a nearly uniform plan: held-out
            calibration windows preferred it), 0.01 for ``"mlp"``.
        cost: activation distance between neurons: ``l2``, ``sqeuclidean`` or
            ``correlation`` (1 - correlation of the two neurons' activations over the
            calibration tokens; uncentred, i.e. cosine, since only the second moment is
            streamed; invariant to rescaling a neuron).
        sinkhorn_iters: maximum Sinkhorn iterations (>= 1).
        sinkhorn_tol: stop when the marginal violation is below this (> 0).
        targets: how the ``k`` target neurons are chosen: ``norm`` (largest
            activation norm), ``spread`` (greedy farthest point) or ``random``.
        target_marginal: ``uniform`` (every target absorbs ``n/k`` sources) or
            ``nearest`` (each target's share of sources nearest to it).
        transport: ``balanced`` (all ``n`` neurons are transported onto the targets;
            a kept neuron may be spread over other targets) or ``mass-preserving``
            (each kept neuron keeps its whole mass on itself and only the dropped
            neurons are transported, the targets' extra capacity shaped like
            ``target_marginal``; for uniform marginals a kept neuron is then exactly
            ``k/n`` of its merged neuron, the balanced plan's upper bound).
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
    transport: str = field(default="balanced", metadata={"choices": TRANSPORTS})
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
        if self.transport not in TRANSPORTS:
            raise ValueError(f"unknown transport {self.transport!r}; available: {', '.join(TRANSPORTS)}")
        self.sinkhorn_iters = check_int("sinkhorn_iters", self.sinkhorn_iters, 1)
        if not (isinstance(self.sinkhorn_tol, (int, float)) and self.sinkhorn_tol > 0):
            raise ValueError(f"sinkhorn_tol must be > 0, got {self.sinkhorn_tol!r}")
        self.target_seed = check_int("target_seed", self.target_seed)
        if self.where == "mlp" and self.slice_head:
            raise ValueError("slice_head applies to where='residual' only")

    def touches(self) -> frozenset[str]:
        """What this method changes (see :meth:`slimformer.arch.ArchAdapter.refusal`): the residual
        stream (``where="residual"``) or the MLP channels (``where="mlp"``)."""
        return frozenset({"residual" if self.where == "residual" else "mlp"})

    def widths_config(self) -> ResidualWidthsConfig:
        """The width/schedule part as a :class:`ResidualWidthsConfig` (SliceGPT's planning rules)."""
        return ResidualWidthsConfig(
            sparsity=self.sparsity, target_params=self.target_params, round_to=self.round_to,
            slice_head=self.slice_head, schedule=self.schedule, slicing_base=self.slicing_base,
            temperature=self.temperature, max_layer_sparsity=self.max_layer_sparsity,
        )


__all__ = ["DEFAULT_ENTROPIC_REG", "DOTResizeConfig", "WHERE"]
