"""Choosing between compressed candidates on held-out calibration windows (``auto``, ``composite``).

The calibration windows are split once (:func:`split_calibration`): candidates calibrate on the
first part and are scored on the held-out rest (:func:`heldout_nll`), never on evaluation text;
the model then :func:`become` s the winning copy.
"""

from __future__ import annotations

import time
from typing import Any, Callable

import torch
from torch import nn


@torch.no_grad()
def heldout_nll(model: nn.Module, ids: torch.Tensor, batch_size: int, device: torch.device) -> float:
    """Mean next-token negative log-likelihood of ``model`` on windows ``ids: [n, T]`` (nats/token).

    Each window is scored on its own (tokens 1..T-1 predicted from their prefix), the model on
    ``device`` for the duration and back where it was afterwards.
    """
    home = next(model.parameters()).device
    model.to(device)
    total, count = 0.0, 0
    try:
        for chunk in torch.split(ids, max(1, batch_size)):
            chunk = chunk.to(device)
            logits = model(input_ids=chunk, use_cache=False).logits[:, :-1].float()  # [b, T-1, V]
            nll = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), chunk[:, 1:].reshape(-1),
                                                    reduction="sum")
            total += float(nll)
            count += chunk[:, 1:].numel()
    finally:
        model.to(home)
    return total / count


def split_calibration(ids: torch.Tensor, holdout: float, who: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """``(calibrate [n - k, T], held out [k, T])``: the last ``k = max(1, round(holdout * n))`` windows.

    ``who`` names the method in the error raised when there are fewer than 2 windows.
    """
    n = ids.shape[0]
    if n < 2:
        raise ValueError(f"{who} needs at least 2 calibration windows (one to hold out), got {n}")
    k = min(n - 1, max(1, round(holdout * n)))
    return ids[: n - k], ids[n - k:]


def become(model: nn.Module, other: nn.Module) -> None:
    """Make ``model`` the compressed copy ``other`` (same class): its modules, parameters, config."""
    if type(model) is not type(other):
        raise TypeError(f"cannot turn {type(model).__name__} into {type(other).__name__}")
    model.__dict__.clear()
    model.__dict__.update(other.__dict__)


class Selection:
    """The best compressed copy seen so far (lowest held-out NLL), and the candidates' time box.

    Callers keep their own report rows; :meth:`offer` remembers the winning copy, its report
    fields and its row index, and :meth:`take` hands it over (or explains why none ran).
    """

    def __init__(self, max_minutes: float | None) -> None:
        self.max_minutes = max_minutes
        self.start = time.perf_counter()
        self.nll = float("inf")
        self.model: nn.Module | None = None
        self.extra: dict[str, Any] = {}
        self.index = -1

    def out_of_time(self) -> bool:
        """True once one candidate was kept and the time box (if any) is spent."""
        return (self.max_minutes is not None and self.model is not None
                and time.perf_counter() - self.start > 60 * float(self.max_minutes))

    def offer(self, nll: float, work: nn.Module, extra: dict[str, Any], index: int) -> None:
        """Keep ``work`` if it scores below every earlier candidate."""
        if self.model is None or nll < self.nll:
            self.nll, self.model, self.extra, self.index = nll, work, extra, index

    def take(self, failure: str, rows: list[dict[str, Any]], label: Callable[[dict[str, Any]], str]
             ) -> tuple[nn.Module, dict[str, Any], int]:
        """``(chosen copy, its report fields, its row index)``.

        Raises:
            ValueError: no candidate ran: ``failure`` and, per row, ``label(row)`` with its error or skip reason.
        """
        if self.model is None:
            why = "; ".join(f"{label(r)}: {r.get('error', r.get('skipped'))}" for r in rows)
            raise ValueError(f"{failure}: {why}")
        return self.model, self.extra, self.index


__all__ = ["Selection", "become", "heldout_nll", "split_calibration"]
