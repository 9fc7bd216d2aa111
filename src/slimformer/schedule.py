"""Per-layer budget allocation: a schedule maps (model, scores, target) to widths.

A :class:`Schedule` turns a mean slicing fraction ``SP`` (SliceGPT's
"sparsity": the fraction of the residual width ``d`` deleted) and optional
per-block scores into one slicing fraction per block, ``FS_i``, with
``mean(FS) = SP``:

* ``uniform``: ``FS_i = SP`` (SliceGPT).
* ``layer-redundancy`` (Dumitru et al., 2024): ``LR_i = 1 - minmax(BI)_i``,
  ``FS_i = SB + (SP - SB) * LR_i / mean(LR)``; the most important block
  (highest BI) gets the slicing base ``SB``, redundant blocks get more.
* ``global`` (MoDeGPT §3.3, entropy-regularised): ``FS = L * SP * softmax(-BI / T)``,
  capped at ``max_layer_sparsity`` with the excess handed to the uncapped
  blocks (water filling), so the mean stays ``SP``. :meth:`Schedule.fractions`
  is all another method (e.g. MoDeGPT, which cuts modules rather than the
  residual) needs.

:func:`plan_schedule` turns fractions into widths at every residual point
(:class:`slimformer.core.params.ResidualWidths`), either from a given ``SP`` or
by bisection on ``SP`` for a target fraction of *parameters* removed, counted
exactly by :func:`slimformer.core.params.compressed_param_count`.

Rounding of widths (documented choice): ``uniform`` keeps SliceGPT's rule,
``int((1 - SP) d)`` rounded *down* to a multiple of ``round_to``; the other
schedules follow the layer-redundancy reference code, ``round((1 - FS_i) d)``
to the *nearest* multiple of ``round_to`` (1 = no multiple).
"""

from __future__ import annotations

import logging
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Protocol, Sequence, TypeVar

from torch import nn

from .arch import ArchAdapter
from .core.params import ResidualWidths, compressed_param_count, count_params
from .validate import (  # noqa: F401  (re-exported)
    DEFAULT_BASE_RATIO, check_budget, check_fraction, check_int, check_temperature,
)

logger = logging.getLogger("slimformer.schedule")

#: bisection steps of the target-params search (interval 2**-60 of [0, 1)).
_BISECTION_STEPS = 60

# the torch-free validators (slimformer.validate) the method configs use, re-exported here
_check_fraction = check_fraction


def _check_scores(scores: Sequence[float] | None, n_layers: int, schedule: str) -> list[float]:
    if scores is None:
        raise ValueError(f"schedule {schedule!r} needs per-layer scores (BI), got none")
    s = [float(x) for x in scores]
    if len(s) != n_layers:
        raise ValueError(f"schedule {schedule!r}: {len(s)} scores for {n_layers} layers")
    if not all(math.isfinite(x) for x in s):
        raise ValueError(f"schedule {schedule!r}: scores must be finite, got {s}")
    return s


class Schedule(ABC):
    """Per-block slicing fractions from a mean slicing fraction and per-block scores."""

    name: ClassVar[str]
    needs_scores: ClassVar[bool] = True
    rounding: ClassVar[str] = "nearest"  # "floor" (SliceGPT) or "nearest" (reference LR code)

    @abstractmethod
    def fractions(self, sparsity: float, n_layers: int, scores: Sequence[float] | None = None) -> list[float]:
        """``FS_i`` per block, each in ``[0, 1)``, with mean ``sparsity``; raises ValueError if impossible."""

    def min_sparsity(self) -> float:
        """Smallest mean slicing the schedule accepts."""
        return 0.0

    def params(self) -> dict[str, Any]:
        """The schedule's own settings (for reports)."""
        return {}


@dataclass(frozen=True)
class Uniform(Schedule):
    """Same slicing for every block (SliceGPT)."""

    name: ClassVar[str] = "uniform"
    needs_scores: ClassVar[bool] = False
    rounding: ClassVar[str] = "floor"

    def fractions(self, sparsity: float, n_layers: int, scores: Sequence[float] | None = None) -> list[float]:
        sp = _check_fraction("sparsity", sparsity)
        return [sp] * n_layers


def layer_redundancy(bi: Sequence[float]) -> list[float]:
    """``LR_i = 1 - minmax(BI)_i`` in [0, 1]: 0 for the most important block, 1 for the least.

    All-equal scores (or one block) give ``LR = 1`` everywhere (no preference).
    """
    lo, hi = min(bi), max(bi)
    if hi - lo <= 1e-12 * max(1.0, abs(hi)):
        return [1.0] * len(bi)
    return [1.0 - (b - lo) / (hi - lo) for b in bi]


@dataclass(frozen=True)
class LayerRedundancy(Schedule):
    """Dynamic slicing by layer redundancy (Dumitru et al., Findings of EMNLP 2024).

    ``FS_i = SB + (SP - SB) * LR_i / mean(LR)`` (mean exactly ``SP``). No clipping,
    as in the reference code: a block sliced by 100% or more is an error.

    Attributes:
        slicing_base: ``SB``, the slicing of the most important block, in
            ``[0, SP]``; ``None`` = ``DEFAULT_BASE_RATIO * SP``.
    """

    slicing_base: float | None = None

    name: ClassVar[str] = "layer-redundancy"

    def __post_init__(self) -> None:
        if self.slicing_base is not None:
            _check_fraction("slicing_base", self.slicing_base)

    def base(self, sparsity: float) -> float:
        return DEFAULT_BASE_RATIO * sparsity if self.slicing_base is None else float(self.slicing_base)

    def min_sparsity(self) -> float:
        return 0.0 if self.slicing_base is None else float(self.slicing_base)

    def params(self) -> dict[str, Any]:
        return {"slicing_base": self.slicing_base, "default_base_ratio": DEFAULT_BASE_RATIO}

    def fractions(self, sparsity: float, n_layers: int, scores: Sequence[float] | None = None) -> list[float]:
        sp = _check_fraction("sparsity", sparsity)
        bi = _check_scores(scores, n_layers, self.name)
        sb = self.base(sp)
        if sb > sp + 1e-12:
            raise ValueError(f"slicing_base {sb} must not exceed the mean slicing (sparsity) {sp}")
        lr = layer_redundancy(bi)
        mean_lr = sum(lr) / len(lr)
        fs = [sb + (sp - sb) * x / mean_lr for x in lr]
        worst = max(range(n_layers), key=lambda i: fs[i])
        if fs[worst] >= 1.0:
            raise ValueError(
                f"layer-redundancy schedule slices layer {worst} by {fs[worst]:.3f} >= 100% "
                f"(sparsity {sp:.4f}, slicing_base {sb:.4f}, mean LR {mean_lr:.3f}); "
                "use a larger slicing_base or a smaller sparsity"
            )
        return fs


def softmax_allocation(scores: Sequence[float], sparsity: float, temperature: float, cap: float) -> list[float]:
    """``phi = L * SP * softmax(-s / T)`` with every ``phi_l <= cap`` and ``mean(phi) = SP``.

    Water filling: blocks that would exceed ``cap`` get ``cap``; the rest of the
    budget is shared by the others in proportion to their softmax weights.
    """
    n = len(scores)
    m = max(-s / temperature for s in scores)
    weights = [math.exp(-s / temperature - m) for s in scores]
    budget = n * sparsity
    phi = [0.0] * n
    free = set(range(n))
    while free:
        remaining = budget - cap * (n - len(free))
        wsum = sum(weights[i] for i in free)
        over = {i for i in free if remaining * weights[i] / wsum > cap}
        if not over:
            for i in free:
                phi[i] = remaining * weights[i] / wsum
            break
        for i in over:
            phi[i] = cap
        free -= over
    return phi


@dataclass(frozen=True)
class GlobalSoftmax(Schedule):
    """MoDeGPT's global sparsity allocation (entropy-regularised, §3.3).

    ``FS = L * SP * softmax(-BI / temperature)``: important blocks (high BI) get
    less slicing. ``max_layer_sparsity`` caps any block (implementations use 0.8;
    the paper does not cap) and the excess moves to the other blocks.

    Attributes:
        temperature: softmax temperature ``epsilon`` (> 0) on the BI scale
            (mean-token BI in [0, 2]); small = peaked. Default 0.15 (cbacary/MoDeGPT).
        max_layer_sparsity: cap per block, in (0, 1).
    """

    temperature: float = 0.15
    max_layer_sparsity: float = 0.8

    name: ClassVar[str] = "global"

    def __post_init__(self) -> None:
        check_temperature(self.temperature)
        _check_fraction("max_layer_sparsity", self.max_layer_sparsity, allow_zero=False)

    def min_sparsity(self) -> float:
        return 0.0

    def params(self) -> dict[str, Any]:
        return {"temperature": self.temperature, "max_layer_sparsity": self.max_layer_sparsity}

    def fractions(self, sparsity: float, n_layers: int, scores: Sequence[float] | None = None) -> list[float]:
        sp = _check_fraction("sparsity", sparsity)
        bi = _check_scores(scores, n_layers, self.name)
        cap = float(self.max_layer_sparsity)
        if sp > cap:
            raise ValueError(f"sparsity {sp} exceeds max_layer_sparsity {cap}: the mean cannot be reached")
        return softmax_allocation(bi, sp, float(self.temperature), cap)


SCHEDULES: dict[str, type[Schedule]] = {s.name: s for s in (Uniform, LayerRedundancy, GlobalSoftmax)}


def schedule_names() -> list[str]:
    return list(SCHEDULES)


def make_schedule(name: str, **params: Any) -> Schedule:
    """Build a schedule by name; ``params`` are its settings (``None`` values are ignored)."""
    if name not in SCHEDULES:
        raise ValueError(f"unknown schedule {name!r}; available: {', '.join(SCHEDULES)}")
    cls = SCHEDULES[name]
    own = {f for f in getattr(cls, "__dataclass_fields__", {})}
    given = {k: v for k, v in params.items() if v is not None}
    foreign = sorted(set(given) - own)
    if foreign:
        raise ValueError(f"schedule {name!r} does not take {', '.join(foreign)}")
    return cls(**given)


# ----- widths -----------------------------------------------------------------------


def width_from_fraction(fraction: float, d: int, round_to: int, rounding: str) -> int:
    """Kept width of a point sliced by ``fraction``: floor or nearest multiple of ``round_to``."""
    r = int(round_to)
    if rounding == "floor":
        k = int((1.0 - fraction) * d)
        k -= k % r
    elif rounding == "nearest":
        k = r * int(round((1.0 - fraction) * d / r))
    else:
        raise ValueError(f"unknown rounding {rounding!r}")
    return min(k, d)


@dataclass(frozen=True)
class SchedulePlan:
    """A schedule's decision for one model.

    Attributes:
        schedule: schedule name.
        sparsity: mean slicing fraction ``SP`` used (given or solved for).
        fractions: ``FS_i`` per block.
        layer_widths: ``w_i`` per block (width read by block ``i``).
        widths: kept width at every residual point.
        params_after: exact parameter count after slicing.
        params_before: parameter count of the dense model.
        target_params: requested fraction of parameters to remove (or ``None``).
    """

    schedule: str
    sparsity: float
    fractions: tuple[float, ...]
    layer_widths: tuple[int, ...]
    widths: ResidualWidths
    params_after: int
    params_before: int
    target_params: float | None = None
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def removed_fraction(self) -> float:
        return 1.0 - self.params_after / self.params_before

    def report(self) -> dict[str, Any]:
        """Report fields: schedule, sparsity, per-layer slicing, widths, (target_params)."""
        out: dict[str, Any] = {
            "schedule": self.schedule,
            "schedule_settings": dict(self.settings),
            "sparsity": self.sparsity,
            "layer_sparsity": [round(f, 6) for f in self.fractions],
            "widths": self.widths.to_dict(),
        }
        if self.target_params is not None:
            out["target_params"] = {"requested": self.target_params, "achieved": self.removed_fraction}
        return out


def layer_widths_for(
    schedule: Schedule, sparsity: float, n_layers: int, d: int, scores: Sequence[float] | None, round_to: int
) -> tuple[list[float], list[int]]:
    """``(FS_i, w_i)`` per block; raises ValueError if a block would keep no dimension."""
    fs = schedule.fractions(sparsity, n_layers, scores)
    ws = [width_from_fraction(f, d, round_to, schedule.rounding) for f in fs]
    bad = [i for i, w in enumerate(ws) if w < 1]
    if bad:
        raise ValueError(
            f"{schedule.name} schedule leaves layer {bad[0]} no dimension of d={d} "
            f"(slicing {fs[bad[0]]:.3f}, round_to {round_to}); use a smaller sparsity or round_to"
        )
    return fs, ws


class BudgetPlan(Protocol):
    """What the budget search needs of a plan: its mean fraction and the parameters it removes."""

    @property
    def sparsity(self) -> float: ...

    @property
    def removed_fraction(self) -> float: ...


PlanT = TypeVar("PlanT", bound=BudgetPlan)


def solve_budget(build: Callable[[float], PlanT], *, sparsity: float | None, target_params: float | None,
                 lo: float = 0.0, label: str = "budget") -> PlanT:
    """The one budget rule of every method: ``build(sparsity)``, or the plan whose exact parameter
    count removes the fraction closest to ``target_params`` (:func:`bisect_target`).

    Args:
        build: the plan at a mean fraction ``sp`` (widths, kept counts, ...) with its exact
            parameter count; raises ValueError for a fraction the schedule cannot realise.
        sparsity, target_params: exactly one of the two.
        lo: the smallest mean fraction the schedule accepts (:meth:`Schedule.min_sparsity`).
        label: names the search in the log line.
    """
    if (sparsity is None) == (target_params is None):
        raise ValueError("give exactly one of sparsity or target_params")
    if sparsity is not None:
        return build(sparsity)
    target = _check_fraction("target_params", target_params, allow_zero=False)  # type: ignore[arg-type]
    plan = bisect_target(build, target, lo)
    logger.info("%s: target %.4f of parameters -> mean fraction %.4f removes %.4f",
                label, target, plan.sparsity, plan.removed_fraction)
    return plan


def bisect_target(build: Callable[[float], PlanT], target: float, lo: float) -> PlanT:
    """Mean slicing whose exact parameter count removes the fraction closest to ``target``.

    Removal is non-decreasing in the mean slicing (every width shrinks or stays),
    so bisection finds the step where it crosses ``target``; the closer of the
    two neighbouring plans wins. Slicings the schedule rejects count as "too much".
    """
    try:
        best_below = build(lo)
    except ValueError as exc:
        raise ValueError(f"target_params: the schedule rejects even its smallest sparsity {lo}: {exc}") from exc
    if best_below.removed_fraction >= target:
        if best_below.removed_fraction - target <= 1e-9:
            return best_below
        raise ValueError(
            f"target_params {target} is unreachable: slicing at sparsity {lo:g} already removes "
            f"{best_below.removed_fraction:.4f} of the parameters (untying the head and the shortcut "
            "matrices add parameters); request a larger fraction"
            + (" or a smaller slicing_base" if lo > 0 else "")
        )
    best_above: PlanT | None = None
    a, b = lo, 1.0
    for _ in range(_BISECTION_STEPS):
        mid = 0.5 * (a + b)
        try:
            plan = build(mid)
        except ValueError:
            b = mid
            continue
        if plan.removed_fraction < target:
            a, best_below = mid, plan
        else:
            b, best_above = mid, plan
    if best_above is None:
        raise ValueError(
            f"target_params {target} is unreachable with this schedule: at most "
            f"{best_below.removed_fraction:.4f} of the parameters can be removed "
            f"(sparsity {best_below.sparsity:.4f}; beyond it a layer would be sliced to nothing)"
        )
    below_gap = target - best_below.removed_fraction
    above_gap = best_above.removed_fraction - target
    return best_below if below_gap < above_gap else best_above


def plan_schedule(
    model: nn.Module,
    adapter: ArchAdapter,
    schedule: Schedule,
    scores: Sequence[float] | None = None,
    *,
    sparsity: float | None = None,
    target_params: float | None = None,
    round_to: int = 1,
    slice_head: bool = False,
    **variant: bool,
) -> SchedulePlan:
    """Residual widths for ``model`` (dense) from a mean slicing or a parameter target.

    Args:
        model: the dense model (its shapes are counted, nothing is modified).
        schedule: how to spread the slicing over blocks.
        scores: per-block BI (needed unless ``schedule.needs_scores`` is False).
        sparsity: mean slicing fraction ``SP`` in [0, 1); or
        target_params: fraction of parameters to remove in (0, 1): ``SP`` is
            found by bisection on the exact count. Exactly one of the two.
        round_to: widths are multiples of this.
        slice_head: also slice the last block's output / the head input.
        variant: ``keep_tied`` / ``shared_basis`` flags of
            :func:`slimformer.core.params.compressed_param_count`: the budget search then
            counts that SliceGPT variant's head and shortcuts exactly.
    """
    if (sparsity is None) == (target_params is None):
        raise ValueError("give exactly one of sparsity or target_params")
    if int(round_to) < 1:
        raise ValueError(f"round_to must be >= 1, got {round_to!r}")
    d = model.config.hidden_size
    n_layers = len(adapter.get_layers(model))
    before = count_params(model)

    def build(sp: float) -> SchedulePlan:
        fs, ws = layer_widths_for(schedule, sp, n_layers, d, scores, round_to)
        widths = ResidualWidths.from_layer_widths(ws, d, adapter.parallel, slice_head)
        after = compressed_param_count(model, adapter, widths, **variant)
        return SchedulePlan(schedule.name, sp, tuple(fs), tuple(ws), widths, after, before,
                            target_params, schedule.params())

    flags = ", ".join(k for k, v in variant.items() if v)
    plan = solve_budget(build, sparsity=sparsity, target_params=target_params, lo=schedule.min_sparsity(),
                        label=f"{schedule.name} schedule" + (f" ({flags})" if flags else ""))
    if target_params is None:
        return plan
    target = float(target_params)
    if abs(plan.removed_fraction - target) > 0.01:
        logger.warning(
            "target_params %.4f achieved %.4f: width steps of round_to=%d are coarse for d=%d",
            target, plan.removed_fraction, round_to, d,
        )
    return plan
