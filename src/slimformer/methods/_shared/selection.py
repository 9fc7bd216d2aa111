"""Choosing between compressed candidates on held-out calibration windows (``auto``, ``composite``).

The calibration windows are split once (:func:`split_calibration`): candidates calibrate on the
first part and are scored on the held-out rest (:func:`heldout_nll`), never on evaluation text;
the model then :func:`become` s the winning copy.
"""

from __future__ import annotations

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


__all__ = ["become", "heldout_nll", "split_calibration"]
