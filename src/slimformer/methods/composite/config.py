"""Configuration of ``composite`` (torch-free: the CLI is generated from it)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from ...validate import (ATTENTION_MODES, SCHEDULE_NAMES, check_bool, check_fraction, check_schedule,
                         check_selection)

#: residual-slicing shares tried by default: pure FASP, three mixtures, pure SliceGPT
DEFAULT_SPLITS = "0,0.25,0.5,0.75,1"


def parse_splits(text: Any) -> list[float]:
    """``"0,0.25,0.5"`` (or ``"0/0.25/0.5"``) -> ``[0.0, 0.25, 0.5]`` (also a number or a sequence).

    Each split is the fraction of the removed parameters given to residual slicing, in [0, 1].
    Raises ValueError on an empty list, a value that is no number or outside [0, 1], or a repeat.
    """
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        items: list[Any] = [text]
    elif isinstance(text, str):  # commas, or slashes inside an auto candidate ("composite:splits=0/0.5/1")
        items = [s.strip() for s in text.replace("/", ",").split(",") if s.strip()]
    else:
        items = list(text)
    out: list[float] = []
    for item in items:
        try:
            value = float(item)
        except (TypeError, ValueError):
            raise ValueError(f"composite splits are numbers in [0, 1], got {item!r}") from None
        if math.isnan(value) or not 0.0 <= value <= 1.0:
            raise ValueError(f"composite splits must be in [0, 1] (the residual-slicing share of the budget), "
                             f"got {item!r}")
        if any(abs(value - v) < 1e-12 for v in out):
            raise ValueError(f"composite split {value:g} is listed twice")
        out.append(value)
    if not out:
        raise ValueError("composite needs at least one split (e.g. --splits 0,0.25,0.5,0.75,1)")
    return out


@dataclass
class CompositeConfig:
    """One parameter budget spent on residual slicing, whole heads and MLP channels together.

    For each split ``s`` a copy of the model is first pruned with FASP (whole heads and MLP
    channels, least-squares restoration) until ``(1 - s) * target_params`` of the *original*
    parameters are gone, then sliced with SliceGPT (PCA rotation of the residual stream) with
    the target that brings the total to ``target_params`` of the original count (computed
    from the exact counts after pruning). Every candidate calibrates on the calibration windows
    that are not held out and is scored by its perplexity on the held-out ones (the last
    ``holdout`` fraction of the calibration windows, never evaluation text); the model becomes
    the best one. ``s = 0`` is FASP alone and ``s = 1`` SliceGPT alone with the same settings,
    so when they are among the splits the choice is never worse on held-out data than either.
    Every candidate's split, size, held-out score and time is in the report
    (``composite.candidates``). Needs memory for one more copy of the model.

    Attributes:
        target_params: fraction of the model's *parameters* to remove, in (0, 1), over all
            dimensions together.
        splits: comma-separated residual-slicing shares of the removed parameters to try,
            each in [0, 1] (0: FASP only, 1: SliceGPT only).
        attention: what the pruning part deletes in attention: ``heads`` (whole GQA groups),
            ``channels`` (value channels per head) or ``none`` (MLP channels only).
        schedule: per-layer allocation of the residual slicing: ``uniform``,
            ``layer-redundancy`` or ``global``.
        prune_schedule: per-layer allocation of the pruning (FASP's ``schedule``):
            ``uniform``, ``layer-redundancy`` or ``global``.
        keep_tied: SliceGPT's ``keep_tied`` for the slicing part: keep a tied LM head tied to
            the sliced embedding instead of untying it at full width (RMSNorm families only:
            on others the splits that slice fail and are reported, the pure-pruning split
            still runs).
        holdout: fraction of the calibration windows held out for scoring (at least one
            window; the rest calibrate the candidates).
        refit: after choosing the split on held-out windows, compress a fresh copy with that
            split on *all* the calibration windows (held-out ones included) and return it (the
            held-out score of the returned model is then no longer a clean estimate; default:
            return the scored candidate itself).
        max_minutes: start no new candidate after this many minutes (``None``: try all); the
            candidates scored so far compete, the others are reported as skipped.
    """

    target_params: float | None = None
    splits: str = DEFAULT_SPLITS
    attention: str = field(default="heads", metadata={"choices": ATTENTION_MODES})
    schedule: str = field(default="uniform", metadata={"choices": SCHEDULE_NAMES})
    prune_schedule: str = field(default="uniform", metadata={"choices": SCHEDULE_NAMES})
    keep_tied: bool = False
    holdout: float = 0.1
    refit: bool = False
    max_minutes: float | None = None

    method = "composite"

    def __post_init__(self) -> None:
        if self.target_params is None:
            raise ValueError("composite needs target_params (the fraction of parameters removed in all)")
        self.target_params = check_fraction("target_params", self.target_params, allow_zero=False)
        self.splits = ",".join(f"{s:g}" for s in parse_splits(self.splits))
        if self.attention not in ATTENTION_MODES:
            raise ValueError(f"attention must be one of {', '.join(ATTENTION_MODES)}, got {self.attention!r}")
        check_schedule(self.schedule)
        check_schedule(self.prune_schedule)
        for name in ("keep_tied", "refit"):
            check_bool(name, getattr(self, name))
        check_selection("composite", self.holdout, self.max_minutes)

    def split_values(self) -> list[float]:
        """The residual-slicing shares to try, in the order given."""
        return parse_splits(self.splits)

    def touches(self) -> frozenset[str]:
        """What this method changes (see :meth:`slimformer.arch.ArchAdapter.refusal`): the residual
        stream, heads and MLP channels."""
        return frozenset({"residual", "heads", "mlp"})


__all__ = ["CompositeConfig", "DEFAULT_SPLITS", "parse_splits"]
