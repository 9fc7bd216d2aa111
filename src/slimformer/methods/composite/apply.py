"""``composite``: for each split of the budget, prune a copy with FASP (heads and MLP channels), then
slice its residual stream with SliceGPT to the exact total; keep the copy that scores best on
held-out calibration windows (in place).

Budget arithmetic, with ``P0`` the original parameter count, ``T`` the target fraction and
``s`` the residual-slicing share:

* FASP removes ``(1 - s) T`` of ``P0``: its ``target_params`` is ``(1 - s) T`` (it counts from
  the original model), leaving ``P1`` parameters;
* SliceGPT then has to reach ``(1 - T) P0`` parameters from ``P1``: its ``target_params``
  (a fraction of the model it is given) is ``1 - (1 - T) P0 / P1``, computed from the exact
  count ``P1``, so FASP's rounding to whole heads/channels is absorbed by the slicing;
* ``s = 0`` skips the slicing and ``s = 1`` the pruning (pure FASP / pure SliceGPT).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import time
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from ...arch import ArchAdapter, get_adapter
from ...core.params import count_params
from .._shared.selection import Selection, become, heldout_nll, split_calibration
from ..base import Runtime, get_method
from .config import CompositeConfig

logger = logging.getLogger("slimformer.methods.composite")

#: a candidate whose removed fraction misses the target by more than this is not eligible
TARGET_TOLERANCE = 0.01
#: shares of the budget below this are not worth a pass of their own (skipped)
MIN_SHARE = 1e-6


def prune_target(target: float, split: float) -> float:
    """FASP's ``target_params``: the ``(1 - split)`` share of ``target`` (both fractions of ``P0``)."""
    return (1.0 - split) * target


def slice_target(params_before: int, params_now: int, target: float) -> float:
    """SliceGPT's ``target_params`` on a model of ``params_now`` parameters so that
    ``(1 - target) * params_before`` remain (``<= 0``: nothing left to slice)."""
    return 1.0 - (1.0 - target) * params_before / params_now


def fasp_config(config: CompositeConfig, target: float) -> Any:
    """The FASP config of the pruning part (via the registry: no import of another method folder)."""
    return get_method("fasp").config_cls(target_params=target, attention=config.attention,
                                         schedule=config.prune_schedule)


def slicegpt_config(config: CompositeConfig, target: float) -> Any:
    """The SliceGPT config of the residual-slicing part."""
    return get_method("slicegpt").config_cls(target_params=target, schedule=config.schedule,
                                             keep_tied=config.keep_tied)


def run_split(work: nn.Module, config: CompositeConfig, split: float, train: torch.Tensor, runtime: Runtime,
              params_before: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """Compress ``work`` (a copy, in place) with FASP then SliceGPT for one ``split``.

    Args:
        work: the model copy to compress.
        split: the residual-slicing share of the budget, in [0, 1].
        train: calibration windows ``[n, T]`` (the held-out ones excluded).
        params_before: ``P0``, the original model's parameter count.
    Returns:
        ``(row, extra)``: the candidate's report row (targets given to each part) and the
        parts' own report fields (``{"fasp": ..., "slicegpt": ...}``, absent parts omitted).
    Raises:
        ValueError: a part cannot reach its budget on this model.
    """
    target = float(config.target_params)
    row: dict[str, Any] = {"split": split, "fasp_target": 0.0, "slicegpt_target": 0.0}
    extra: dict[str, Any] = {}
    prune = prune_target(target, split)
    if prune > MIN_SHARE:
        cfg = fasp_config(config, prune)
        row["fasp_target"] = prune
        extra["fasp"] = get_method("fasp").apply(work, get_adapter(work), cfg, train, runtime)
    pruned = count_params(work)
    row["params_after_fasp"] = pruned
    rest = slice_target(params_before, pruned, target)
    if split > MIN_SHARE and rest > MIN_SHARE:
        cfg = slicegpt_config(config, rest)
        row["slicegpt_target"] = rest
        extra["slicegpt"] = get_method("slicegpt").apply(work, get_adapter(work), cfg, train, runtime)
    return row, extra


def _candidate(model: nn.Module, config: CompositeConfig, split: float, train: torch.Tensor, held: torch.Tensor,
               runtime: Runtime, params_before: int) -> tuple[dict[str, Any], nn.Module | None, dict[str, Any]]:
    """Compress a copy of ``model`` with one ``split`` on ``train [n, T]``, score it on ``held [k, T]``.

    Returns ``(row, copy, parts' report fields)``; the copy is ``None`` (and the row has
    ``error``) when a part cannot reach its budget or the total misses the target.
    """
    target = float(config.target_params)
    work = copy.deepcopy(model)
    t0 = time.perf_counter()
    try:
        row, extra = run_split(work, config, split, train, runtime, params_before)
    except ValueError as exc:  # e.g. a budget this part cannot reach on this model
        logger.warning("composite: split %g failed: %s", split, str(exc).splitlines()[0])
        return {"split": split, "error": str(exc).splitlines()[0]}, None, {}
    row["seconds"] = round(time.perf_counter() - t0, 3)
    after = count_params(work)
    row.update(params_after=after, removed_fraction=1.0 - after / params_before)
    if abs(row["removed_fraction"] - target) > TARGET_TOLERANCE:
        row["error"] = f"removed {row['removed_fraction']:.4f}, not within {TARGET_TOLERANCE} of {target:g}"
        logger.warning("composite: split %g %s", split, row["error"])
        return row, None, {}
    nll = heldout_nll(work, held, runtime.batch_size, runtime.device)
    row.update(heldout_nll=nll, heldout_ppl=math.exp(nll))
    logger.info("composite: split %g (fasp %.4f, slicegpt %.4f) -> removed %.4f, held-out ppl %.4f in %.1fs",
                split, row["fasp_target"], row["slicegpt_target"], row["removed_fraction"], row["heldout_ppl"],
                row["seconds"])
    return row, work, extra


def apply_composite(model: nn.Module, adapter: ArchAdapter, config: CompositeConfig, calib_ids: torch.Tensor,
                    runtime: Runtime) -> dict[str, Any]:
    """Compress a copy for each split, keep the one with the lowest held-out perplexity (in place).

    Args:
        model: the model to compress (becomes the chosen candidate).
        calib_ids: calibration windows ``[N, T]``; the last ``holdout`` fraction scores, the rest calibrates.
    Returns:
        The chosen candidate's parts' report fields (``fasp``, ``slicegpt``) plus ``composite``:
        ``chosen_split``, ``holdout_windows``, ``calibration_windows``, ``dense_heldout_nll`` /
        ``dense_heldout_ppl`` and ``candidates`` (per split: targets of both parts, params after,
        removed fraction, held-out NLL and perplexity, seconds; or ``error`` / ``skipped``), and
        with ``config.refit`` the ``refit`` record (targets, removed fraction, seconds, windows).
    """
    del adapter  # each part looks up the adapter of the (changing) copy itself
    train, held = split_calibration(calib_ids, float(config.holdout), who="composite")
    params_before = count_params(model)
    dense_nll = heldout_nll(model, held, runtime.batch_size, runtime.device)
    inner = dataclasses.replace(runtime, progress=False, blocks=None)  # each copy is in memory
    rows: list[dict[str, Any]] = []
    best = Selection(config.max_minutes)
    bar = tqdm(config.split_values(), desc="composite", unit="split", disable=not runtime.progress, leave=False)
    for split in bar:
        bar.set_postfix_str(f"slicing share {split:g}")
        if best.out_of_time():
            rows.append({"split": split, "skipped": f"time box of {config.max_minutes} minutes reached"})
            continue
        row, work, extra = _candidate(model, config, split, train, held, inner, params_before)
        rows.append(row)
        if work is not None:
            best.offer(row["heldout_nll"], work, extra, len(rows) - 1)
        del work
    bar.close()
    chosen, extra, index = best.take("composite: no split could compress this model to the target", rows,
                                     lambda r: f"{r['split']:g}")
    split = rows[index]["split"]
    logger.info("composite: chose slicing share %g (held-out ppl %.4f)", split, rows[index]["heldout_ppl"])
    refit: dict[str, Any] | None = None
    if config.refit:
        chosen, extra, refit = _refit(model, config, split, calib_ids, inner, params_before, chosen, extra)
    become(model, chosen)
    out = dict(extra)
    out["composite"] = {
        "chosen_split": split,
        "holdout_windows": int(held.shape[0]),
        "calibration_windows": int(train.shape[0]),
        "dense_heldout_nll": dense_nll,
        "dense_heldout_ppl": math.exp(dense_nll),
        "candidates": rows,
        **({"refit": refit} if refit is not None else {}),
    }
    return out


def _refit(model: nn.Module, config: CompositeConfig, split: float, calib_ids: torch.Tensor, runtime: Runtime,
           params_before: int, chosen: nn.Module, extra: dict[str, Any]) -> tuple[nn.Module, dict[str, Any],
                                                                                 dict[str, Any]]:
    """Re-run the chosen ``split`` on a fresh copy of (still dense) ``model`` with all windows ``[N, T]``.

    Returns ``(model to keep, its parts' report fields, refit record)``; keeps the scored
    candidate (and says why in the record) if the refit cannot reach the target.
    """
    work = copy.deepcopy(model)
    t0 = time.perf_counter()
    try:
        row, refit_extra = run_split(work, config, split, calib_ids, runtime, params_before)
    except ValueError as exc:
        logger.warning("composite: refit failed, keeping the scored candidate: %s", exc)
        return chosen, extra, {"error": str(exc).splitlines()[0]}
    removed = 1.0 - count_params(work) / params_before
    record = {**row, "removed_fraction": removed, "seconds": round(time.perf_counter() - t0, 3),
              "windows": int(calib_ids.shape[0])}
    if abs(removed - float(config.target_params)) > TARGET_TOLERANCE:
        record["error"] = f"removed {removed:.4f}, not within {TARGET_TOLERANCE} of {config.target_params:g}"
        logger.warning("composite: refit %s; keeping the scored candidate", record["error"])
        return chosen, extra, record
    logger.info("composite: refit split %g on all %d windows -> removed %.4f", split, calib_ids.shape[0], removed)
    return work, refit_extra, record


__all__ = ["apply_composite", "fasp_config", "prune_target", "run_split", "slice_target", "slicegpt_config"]
